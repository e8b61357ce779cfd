//! Webhook delivery runs on its own runtime, on threads the kernel schedules behind the
//! real-time path. Measured on the shared runtime: 10 busy endpoints took publish ingest from
//! 18k to 1.6k events/s, because every publish waited in the same run queues as hundreds of
//! delivery tasks. A delivery can wait a few milliseconds; a publisher's acknowledgement and a
//! subscriber's frame should not. With its own threads at a lower priority (`webhooks.nice`,
//! 10 by default), delivery uses whatever CPU the real-time path leaves, and all of it when
//! that is idle.

use tokio::runtime::{Handle, Runtime};

/// Owns the delivery runtime; dropping it stops the runtime without blocking (allowed inside
/// another runtime, which plain `Runtime` drop is not).
pub struct DeliveryRuntime {
    runtime: Option<Runtime>,
}

impl DeliveryRuntime {
    /// `threads` = 0: half the cores, at least one. `nice`: how much lower than the rest of
    /// Herald the threads run (0 to 19, checked at start).
    pub fn start(threads: usize, nice: u8) -> std::io::Result<DeliveryRuntime> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("herald-webhook")
            .on_thread_start(move || lower_priority(nice.into()))
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

/// Linux keeps a nice value per thread. Set relative to the process's main thread (not to
/// this thread, which inherited its spawner's: a blocking-pool thread started by a delivery
/// worker would otherwise end up 20 below). Raising niceness needs no privilege; where it
/// fails nothing changes but the priority.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: these calls take plain integers and touch no memory of ours.
    unsafe {
        let base = libc::getpriority(libc::PRIO_PROCESS, libc::getpid() as libc::id_t);
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            (base + nice).min(19),
        );
    }
}
