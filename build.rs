//! `refinery::embed_migrations!` (src/migrate.rs) includes each migration file it finds, so cargo
//! rebuilds when one of them changes, but not when a new one is added: without this, a build
//! could silently ship without its newest migration.

fn main() {
    println!("cargo::rerun-if-changed=migrations");
}
