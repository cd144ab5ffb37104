-- The demo's replica tables: the same columns as the source tables (see
-- tests/fixtures/debezium/README.md). redsink adds only _redsink_version to each.
DROP SCHEMA IF EXISTS inventory CASCADE;
CREATE SCHEMA inventory;
CREATE TYPE inventory.size AS ENUM ('S', 'M', 'L');
CREATE TABLE inventory.products (
  id serial PRIMARY KEY, name varchar(255) NOT NULL, description text,
  weight double precision, price numeric(10,2), size inventory.size, tags text[], attrs jsonb,
  created_on date, updated_at timestamptz, restock_at timestamp, cutoff time, sku uuid, photo bytea,
  ratio numeric, lead_time interval, flags bit(4), ip inet, manual text);
CREATE TABLE inventory.customers (id int PRIMARY KEY, first_name text, last_name text, email text UNIQUE, bio text);
CREATE TABLE inventory.order_lines (order_id int, line int, product_id int, qty int, PRIMARY KEY (order_id, line));

DROP TABLE IF EXISTS public.orders;
CREATE TABLE public.orders (
  id bigint PRIMARY KEY, customer_id bigint, status text, amount numeric(12,2), note text,
  created_at timestamptz, updated_at timestamp, attrs jsonb);
