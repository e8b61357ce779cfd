//! The `herald` binary: everything lives in the library; this is only the edge.

/// jemalloc instead of glibc's malloc. Webhook delivery spent a fifth of its CPU in glibc's
/// allocator (arena locks, `malloc_consolidate`), and glibc kept what a burst freed in its
/// arenas until a periodic `malloc_trim`; jemalloc's thread caches and decay do both jobs
/// (BENCHMARKS.md, "jemalloc, a leaner webhook client, and an opt-in write delay").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts: one background thread gives freed pages back
/// to the OS after about a second, and straight away (no lazy `MADV_FREE` stage, which RSS
/// still counts). `_RJEM_MALLOC_CONF` in the environment overrides these.
#[cfg(not(target_env = "msvc"))]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf = MallocConf(
    c"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0"
        .as_ptr(),
);

/// A C string pointer that can live in a static.
#[cfg(not(target_env = "msvc"))]
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// SAFETY: it points at an immutable 'static literal.
#[cfg(not(target_env = "msvc"))]
unsafe impl Sync for MallocConf {}

fn main() -> std::process::ExitCode {
    herald::cli::main()
}
