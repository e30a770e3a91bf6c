//! The service's database pool against a real PostgreSQL (`DATABASE_URL`): its statement
//! timeout, and the connection migrations run on without one.

use platform::test_support::TestDatabase;

#[tokio::test]
async fn a_statement_past_the_pools_timeout_is_cancelled_and_migrations_have_none() {
    let db = TestDatabase::create("platform_timeout").await;
    let pool = platform::db::connect(&platform::db::DbConfig {
        url: db.url.clone(),
        max_connections: 1,
        connect_attempts: 1,
        statement_timeout: std::time::Duration::from_millis(100),
    })
    .await
    .expect("connect");
    let cancelled = sqlx::query("SELECT pg_sleep(5)")
        .execute(&pool)
        .await
        .unwrap_err();
    let code = cancelled
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.to_string());
    assert_eq!(
        code.as_deref(),
        Some("57014"),
        "query_canceled: {cancelled}"
    );
    let mut migrations = platform::db::migrations_connection(&pool).await.unwrap();
    sqlx::query("SELECT pg_sleep(0.3)")
        .execute(&mut migrations)
        .await
        .expect("no timeout for migrations");
    drop(migrations);
    // The pool's own connections keep theirs.
    assert!(
        sqlx::query("SELECT pg_sleep(5)")
            .execute(&pool)
            .await
            .is_err()
    );
    pool.close().await;
    db.drop_database().await;
}
