//! A service's application served in the test process on a loopback port, with a channel
//! to it and a pool on its test database; [`InProcess::finish`] stops it gracefully (the
//! stop must succeed) and drops the database.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::TestDatabase;
use crate::service::RunError;
use crate::service_auth::LinkKey;

/// What a service's `run_until_stopped` waits on to stop.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct InProcess {
    pub addr: SocketAddr,
    pub channel: Channel,
    /// The key of every link, the callers' included.
    pub key: LinkKey,
    pub pool: PgPool,
    db: TestDatabase,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), RunError>>,
}

impl InProcess {
    /// Runs `run` (an application built on `db` and listening at `addr`, given the signal
    /// that stops it) on a task of its own and connects to it.
    pub async fn serve<F, R>(db: TestDatabase, key: LinkKey, addr: SocketAddr, run: F) -> InProcess
    where
        F: FnOnce(StopSignal) -> R,
        R: Future<Output = Result<(), RunError>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(run(Box::pin(async {
            let _ = stopped.await;
        })));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to the test server");
        let pool = PgPool::connect(&db.url)
            .await
            .expect("connect to the test database");
        InProcess {
            addr,
            channel,
            key,
            pool,
            db,
            stop,
            server,
        }
    }

    /// A number the query `sql` counts in the service's database.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Stops the server (graceful shutdown must finish) and drops the database.
    pub async fn finish(self) {
        self.stop.send(()).expect("server still running");
        self.server.await.unwrap().expect("server stopped cleanly");
        self.pool.close().await;
        self.db.drop_database().await;
    }
}
