//! Webhook delivery runs on its own runtime, on threads the kernel schedules behind the
//! real-time path. Measured on the shared runtime: 10 busy endpoints took publish ingest from
//! 18k to 1.6k events/s, because every publish waited in the same run queues as hundreds of
//! delivery tasks. A delivery can wait a few milliseconds; a publisher's acknowledgement and a
//! subscriber's frame should not. With its own threads at a lower priority (nice 10), delivery
//! uses whatever CPU the real-time path leaves, and all of it when that is idle.

use tokio::runtime::{Handle, Runtime};

/// How much lower than the rest of Herald the delivery threads run (a nice increment).
const NICENESS: i32 = 10;

/// Owns the delivery runtime; dropping it stops the runtime without blocking (allowed inside
/// another runtime, which plain `Runtime` drop is not).
pub struct DeliveryRuntime {
    runtime: Option<Runtime>,
}

impl DeliveryRuntime {
    /// `threads` = 0: half the cores, at least one.
    pub fn start(threads: usize) -> std::io::Result<DeliveryRuntime> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("herald-webhook")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(DeliveryRuntime {
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> Handle {
        self.runtime
            .as_ref()
            .expect("delivery runtime")
            .handle()
            .clone()
    }

    /// Stops the runtime without waiting: callers first wait (bounded) for its tasks.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for DeliveryRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Linux keeps a nice value per thread, and threads inherit it from the one that spawns them,
/// so the runtime's blocking pool runs at the same lower priority. Raising niceness needs no
/// privilege; where it fails nothing changes but the priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    unsafe {
        let tid = libc::gettid();
        let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(
            libc::PRIO_PROCESS,
            tid as libc::id_t,
            (current + NICENESS).min(19),
        );
    }
}
