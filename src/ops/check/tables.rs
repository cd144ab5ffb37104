//! The Postgres side of `check`: the GRANTs the config needs, the role's privileges on
//! redsink's own tables, and each fixed target table (exists, has a key, has the version
//! column or may add it, privileges).

use sqlx::PgPool;

use super::Report;
use crate::config::Config;
use crate::map::Mapping;
use crate::table::{TableName, quote_ident};
use crate::write::{self, INTERNAL_TABLES, VERSION_COLUMN};

/// `schema` of a table template, when it is fixed.
fn fixed_schema(table: &str) -> Option<String> {
    let schema = table.split_once('.').map_or("public", |(s, _)| s);
    (!schema.contains("${")).then(|| schema.to_string())
}

/// The GRANTs the config needs, `<role>` to fill in.
pub(super) fn grants(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut schemas: Vec<String> = Vec::new();
    for m in &config.mappings {
        match fixed_schema(&m.table) {
            Some(schema) => {
                if !schemas.contains(&schema) {
                    out.push(format!("GRANT USAGE ON SCHEMA {} TO <role>;", quote_ident(&schema)));
                    schemas.push(schema.clone());
                }
                if m.table.contains("${") {
                    out.push(format!(
                        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO <role>;",
                        quote_ident(&schema)
                    ));
                } else if let Ok(name) = TableName::parse(&m.table) {
                    out.push(format!(
                        "GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO <role>;",
                        name.quoted()
                    ));
                }
            }
            None => out.push(format!(
                "-- {}: grant USAGE and SELECT, INSERT, UPDATE, DELETE on the tables this template names",
                m.table
            )),
        }
    }
    out.push("GRANT USAGE ON SCHEMA redsink TO <role>;".into());
    out.push(format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO <role>;",
        INTERNAL_TABLES.join(", ")
    ));
    out
}

/// Who the role is, its privileges on redsink's tables, and each fixed target table.
pub(super) async fn check_postgres(
    config: &Config,
    mappings: &[Mapping],
    pool: &PgPool,
    report: &mut Report,
) {
    let who: Result<String, _> = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await;
    match who {
        Ok(role) => report.ok(format!("postgres: connected as role {role}")),
        Err(e) => {
            report.problem(format!("postgres: {e}"));
            return;
        }
    }
    match write::internal_tables_present(pool).await {
        Ok(true) => {
            for t in INTERNAL_TABLES {
                privileges(pool, t, report).await;
            }
        }
        Ok(false) => match may_create_schema(pool).await {
            Ok(true) => report.ok(
                "postgres: redsink's schema does not exist yet: `redsink run` creates it at \
                 start (this role may CREATE in the database)",
            ),
            Ok(false) => report.problem(
                "postgres: redsink's schema is missing and this role may not CREATE in the \
                 database: run `redsink migrate` once as an owner, or GRANT CREATE ON DATABASE",
            ),
            Err(e) => report.problem(format!("postgres: {e}")),
        },
        Err(e) => report.problem(format!("postgres: {e}")),
    }
    for m in mappings {
        let Some(fixed) = m.table.fixed() else {
            report.ok(format!(
                "mapping[{}]: table {} depends on the events: checked on the newest entries below",
                m.index, config.mappings[m.index].table
            ));
            continue;
        };
        let name = match fixed {
            Ok(name) => name,
            Err(e) => {
                report.problem(format!("mapping[{}]: {e}", m.index));
                continue;
            }
        };
        table(pool, &name, m, report).await;
    }
}

/// Whether the current role may create a schema in the current database (what
/// `redsink run` needs to create its own).
async fn may_create_schema(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT has_database_privilege(current_database(), 'CREATE')")
        .fetch_one(pool)
        .await
}

/// Whether the role may SELECT, INSERT, UPDATE and DELETE on `table`.
async fn privileges(pool: &PgPool, table: &str, report: &mut Report) {
    let mut missing = Vec::new();
    for privilege in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
        let held: Result<bool, _> = sqlx::query_scalar("SELECT has_table_privilege($1, $2)")
            .bind(table)
            .bind(privilege)
            .fetch_one(pool)
            .await;
        if !held.unwrap_or(false) {
            missing.push(privilege);
        }
    }
    if missing.is_empty() {
        report.ok(format!(
            "postgres: {table}: SELECT, INSERT, UPDATE, DELETE granted"
        ));
    } else {
        report.problem(format!(
            "postgres: {table}: missing {} — see the GRANTs below",
            missing.join(", ")
        ));
    }
}

/// A fixed target table: exists, has the key columns and a unique key, has the version
/// column or may add it.
async fn table(pool: &PgPool, name: &TableName, m: &Mapping, report: &mut Report) {
    let (schema, has_version) = match write::inspect_table(pool, name).await {
        Ok(found) => found,
        Err(e) => {
            report.problem(format!("mapping[{}]: {e}", m.index));
            return;
        }
    };
    privileges(pool, &name.quoted(), report).await;
    if let Some(key) = &m.key {
        let found = key
            .iter()
            .all(|k| schema.columns.iter().any(|c| &c.name == k));
        if !found {
            report.problem(format!(
                "mapping[{}]: table {name} has no column for every key field {key:?}",
                m.index
            ));
        }
    }
    if schema.unique_keys.is_empty() {
        report.problem(format!(
            "mapping[{}]: table {name} has no primary key or unique index: add one on the Debezium key columns",
            m.index
        ));
    }
    if has_version {
        report.ok(format!(
            "table {name}: {} columns, version column present",
            schema.columns.len()
        ));
    } else {
        let owner: bool = sqlx::query_scalar(
            "SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = to_regclass($1)",
        )
        .bind(name.quoted())
        .fetch_one(pool)
        .await
        .unwrap_or(false);
        if owner {
            report.ok(format!(
                "table {name}: redsink will add {VERSION_COLUMN} bytea at start"
            ));
        } else {
            report.problem(format!(
                "table {name}: no {VERSION_COLUMN} column and this role does not own the table: \
                 run ALTER TABLE {} ADD COLUMN {VERSION_COLUMN} bytea as its owner",
                name.quoted()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_of_templates() {
        assert_eq!(
            fixed_schema("inventory.${source.table}").as_deref(),
            Some("inventory")
        );
        assert_eq!(fixed_schema("${source.schema}.t"), None);
        assert_eq!(fixed_schema("orders").as_deref(), Some("public"));
    }
}
