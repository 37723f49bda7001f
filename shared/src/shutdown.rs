//! Stopping: the process-wide signal (Ctrl-C or SIGTERM, what Kubernetes sends), and the one
//! [`Stop`] every loop of a service watches.

use std::time::Duration;

use tokio::sync::watch;

/// Completes when the process is asked to stop.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// What ended a [`Stop::sleep_or_stop`].
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woken {
    /// The stop came first: the loop ends.
    ByStop,
    /// The pause is over: the loop goes on.
    AfterPause,
}

/// Asks every [`Stop`] made with it to stop; dropping it asks too.
#[derive(Debug)]
pub struct Stopper(watch::Sender<bool>);

/// The side a loop watches. Cheap to clone; once asked, it stays stopped.
#[derive(Clone, Debug)]
pub struct Stop(watch::Receiver<bool>);

impl Stopper {
    /// A new signal, not asked yet, and its first watcher.
    pub fn new() -> (Stopper, Stop) {
        let (sender, receiver) = watch::channel(false);
        (Stopper(sender), Stop(receiver))
    }

    /// Asks every watcher to stop.
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }

    /// One more watcher.
    pub fn watcher(&self) -> Stop {
        Stop(self.0.subscribe())
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Stop {
    /// A watcher that is never asked (for a loop run to its end, as in tools and tests).
    pub fn never() -> Stop {
        let (stopper, stop) = Stopper::new();
        std::mem::forget(stopper);
        stop
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once a stop is asked (at once when it already was).
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Sleeps for `pause` unless the stop comes first; says which came first.
    pub async fn sleep_or_stop(&mut self, pause: Duration) -> Woken {
        tokio::select! {
            biased;
            () = self.stopped() => Woken::ByStop,
            () = tokio::time::sleep(pause) => Woken::AfterPause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_sleep_ends_early_when_stopped_and_a_stop_stays_asked() {
        let (stopper, mut stop) = Stopper::new();
        assert!(!stop.is_stopped());
        assert_eq!(
            stop.sleep_or_stop(Duration::from_millis(5)).await,
            Woken::AfterPause
        );
        let mut other = stopper.watcher();
        stopper.stop();
        assert_eq!(
            stop.sleep_or_stop(Duration::from_secs(3600)).await,
            Woken::ByStop
        );
        other.stopped().await;
        assert!(other.is_stopped() && stop.is_stopped());
        let mut gone = {
            let (stopper, stop) = Stopper::new();
            drop(stopper);
            stop
        };
        gone.stopped().await;
    }
}
