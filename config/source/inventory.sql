-- The source database of the Docker Compose stack (service `source`, wal_level=logical).
-- Debezium Server captures these tables into the Redis streams dbserver1.inventory.<table>,
-- and redsink's example mapping writes them to inventory.<table> in the replica, whose tables
-- (config/demo/replica.sql) have exactly these columns (redsink adds only _redsink_version).
-- Keep the two files in step: a column missing from the replica stops the stream.
CREATE SCHEMA inventory;
CREATE TYPE inventory.size AS ENUM ('S', 'M', 'L');
CREATE TABLE inventory.products (
  id serial PRIMARY KEY, name varchar(255) NOT NULL, description text,
  weight double precision, price numeric(10,2), size inventory.size, tags text[], attrs jsonb,
  created_on date, updated_at timestamptz, restock_at timestamp, cutoff time, sku uuid, photo bytea,
  ratio numeric, lead_time interval, flags bit(4), ip inet, manual text);
CREATE TABLE inventory.customers (id int PRIMARY KEY, first_name text, last_name text, email text UNIQUE, bio text);
-- Full before-images on updates and deletes of customers; the other tables keep the default.
ALTER TABLE inventory.customers REPLICA IDENTITY FULL;
CREATE TABLE inventory.order_lines (order_id int, line int, product_id int, qty int, PRIMARY KEY (order_id, line));

-- Seed rows: Debezium's initial snapshot sends them as op "r" events.
-- (No NaN in numeric columns: Debezium's decimal.handling.mode=precise refuses it.)
INSERT INTO inventory.products
  (name, description, weight, price, size, tags, attrs, created_on, updated_at, restock_at,
   cutoff, sku, photo, ratio, lead_time, flags, ip)
VALUES
  ('scooter', 'small 2-wheel scooter', 3.14, 19.99, 'M', '{toy,outdoor}', '{"color": "red"}',
   '2026-01-15', '2026-01-15 10:00:00.123456+09', '2026-02-01 08:30:00', '17:45:00.5',
   '0e6bd1b2-3c2a-4d8e-9d5e-2f9c1f0a7b11', '\xdeadbeef', 12.3456789, '2 days 03:00:00', B'1010', '10.1.2.3'),
  ('car battery', '12V car battery', 8.1, 89.50, 'L', '{auto}', '{"volts": 12}',
   '2026-01-20', '2026-01-20 09:15:00+00', NULL, '08:00:00',
   'a3d5c0de-7b7f-4c55-9a35-0c6f3f1e2b22', NULL, 0.5, '1 day', B'0001', '192.168.0.10'),
  ('hammer', '16oz claw hammer', 0.45, 14.25, 'S', '{tools,hand}', '{"material": "steel"}',
   '2026-02-02', '2026-02-02 16:40:00-05', '2026-03-01 00:00:00', NULL,
   NULL, '\x00ff', 3, '36 hours', B'0110', NULL);
-- A TOASTed column: updates that leave it unchanged send __debezium_unavailable_value.
UPDATE inventory.products SET manual = (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 300) AS i)
 WHERE id = 1;

INSERT INTO inventory.customers VALUES
  (1001, 'Sally', 'Thomas', 'sally@example.com', repeat('long bio ', 400)),
  (1002, 'George', 'Bailey', 'gbailey@example.com', 'short'),
  (1003, 'Edward', 'Walker', 'ed@walker.example.com', NULL),
  (1004, 'Anne', 'Kretchmar', 'annek@example.com', 'likes scooters');
-- Some bulk, so that the dashboard has something to show after the snapshot.
INSERT INTO inventory.customers
SELECT i, 'first' || i, 'last' || i, 'customer' || i || '@example.com', NULL
  FROM generate_series(2000, 2999) AS i;

INSERT INTO inventory.order_lines VALUES (1, 1, 1, 2), (1, 2, 3, 1), (2, 1, 2, 4);
INSERT INTO inventory.order_lines
SELECT o, l, 1 + (o + l) % 3, 1 + (o * l) % 5
  FROM generate_series(3, 502) AS o, generate_series(1, 4) AS l;
