//! Processes and machine facts: child processes that die with the harness
//! (alone, or a server with the workers it forks, as one process group),
//! memory and CPU time of a process from /proc, load average, machine
//! description.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// A command, the signal its process gets when the harness dies, and where
/// the spawned child goes.
type SpawnRequest = (Command, libc::c_int, mpsc::Sender<io::Result<Child>>);

/// PIDs of the children still running, killed on Ctrl-C.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Process groups of servers still running (`spawn_group`), killed whole
/// on Ctrl-C.
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Spawns `cmd` so that it is killed when the harness dies, whatever the way.
pub fn spawn(cmd: Command) -> io::Result<Child> {
    let child = spawn_tied(cmd, libc::SIGKILL)?;
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).push(child.id());
    Ok(child)
}

/// Spawns a server that forks workers of its own (nginx) as the leader of a
/// new process group, so that the whole group can be killed at once: its
/// workers are not the harness's children, and a SIGKILL of the leader
/// alone leaves them running. When the harness dies, the leader gets
/// `death_signal` (for nginx SIGTERM, its fast shutdown, which stops the
/// workers); on Ctrl-C and in `kill_group` the group gets SIGKILL.
pub fn spawn_group(mut cmd: Command, death_signal: libc::c_int) -> io::Result<Child> {
    cmd.process_group(0);
    let child = spawn_tied(cmd, death_signal)?;
    GROUPS.lock().unwrap_or_else(|p| p.into_inner()).push(child.id());
    Ok(child)
}

/// SIGKILL to every process of the group `spawn_group` started with
/// `leader`, and forgets it.
pub fn kill_group(leader: u32) {
    // SAFETY: kill(2) on a process group this process created.
    unsafe {
        libc::kill(-(leader as i32), libc::SIGKILL);
    }
    GROUPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|p| *p != leader);
}

/// Forks `cmd` with `PR_SET_PDEATHSIG` set to `death_signal`.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, so every
/// child is forked by one long-lived thread, never by a runtime worker that
/// may be retired.
fn spawn_tied(cmd: Command, death_signal: libc::c_int) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("bench-spawner".into())
            .spawn(move || {
                for (mut cmd, death_signal, reply) in rx {
                    // SAFETY: prctl and getppid are async-signal-safe; nothing
                    // is allocated between fork and exec.
                    unsafe {
                        cmd.pre_exec(move || {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0 {
                                return Err(io::Error::last_os_error());
                            }
                            if libc::getppid() == 1 {
                                return Err(io::Error::other("the harness is gone"));
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, death_signal, tx))
        .map_err(|_| io::Error::other("spawner thread gone"))?;
    rx.recv().map_err(|_| io::Error::other("spawner thread gone"))?
}

/// Forgets a child that was waited for.
pub fn forget(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).retain(|p| *p != pid);
}

/// Kills every child and every server's process group still running
/// (Ctrl-C, fatal error, end of a phase).
pub fn kill_all_children() {
    for pid in CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
        // SAFETY: plain kill(2) on a PID this process spawned.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    for leader in GROUPS.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
        // SAFETY: kill(2) on a process group this process created.
        unsafe {
            libc::kill(-(leader as i32), libc::SIGKILL);
        }
    }
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL. Returns how long the
/// child took to exit and whether it exited by itself with status 0.
pub fn stop_child(child: &mut Child, grace: Duration) -> (Duration, bool) {
    stop_child_with(child, libc::SIGTERM, grace)
}

/// `stop_child` with another first signal (SIGINT makes `perf record`
/// write its file).
pub fn stop_child_with(child: &mut Child, signal: libc::c_int, grace: Duration) -> (Duration, bool) {
    let started = Instant::now();
    if let Ok(Some(status)) = child.try_wait() {
        forget(child.id());
        return (Duration::ZERO, status.success());
    }
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    while started.elapsed() < grace {
        if let Ok(Some(status)) = child.try_wait() {
            forget(child.id());
            return (started.elapsed(), status.success());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    forget(child.id());
    (started.elapsed(), false)
}

/// Stops a server started with `spawn_group`: `signal` to the leader (for
/// nginx SIGQUIT, its graceful shutdown, which also flushes buffered logs),
/// up to `grace` for it to exit, then SIGKILL to the whole group, which
/// also takes any worker left. Returns how long the leader took and whether
/// it exited by itself with status 0.
pub fn stop_group(leader: &mut Child, signal: libc::c_int, grace: Duration) -> (Duration, bool) {
    let started = Instant::now();
    let mut clean = None;
    if let Ok(Some(status)) = leader.try_wait() {
        clean = Some(status.success());
    } else {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(leader.id() as i32, signal);
        }
        while started.elapsed() < grace {
            if let Ok(Some(status)) = leader.try_wait() {
                clean = Some(status.success());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let took = started.elapsed();
    kill_group(leader.id());
    if clean.is_none() {
        let _ = leader.wait();
    }
    (took, clean.unwrap_or(false))
}

/// The processes whose parent is `pid` (a server's workers), from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).ok().and_then(|t| {
                // The field after the command name (in parentheses) is the state, then the parent.
                let rest = t.get(t.rfind(')')? + 2..)?.to_string();
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            }) == Some(pid)
        })
        .collect()
}

/// How a finished child ran (`wait_with_cpu`).
pub struct Finished {
    pub status: std::process::ExitStatus,
    /// CPU time (user + system), µs, from wait4(2).
    pub cpu_us: u64,
    /// Time its threads waited for a CPU, µs, as read from /proc (every
    /// 20 ms) before they exited.
    pub run_queue_wait_us: u64,
}

/// Waits for `child` to exit, for at most `timeout` (then SIGKILL), and
/// returns its exit status, the CPU time it used (wait4(2): what /proc can
/// no longer tell once it has exited) and its time waiting for a CPU.
pub fn wait_with_cpu(mut child: Child, timeout: Duration) -> io::Result<Finished> {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    let mut waited_us = 0;
    loop {
        // The largest reading: once its threads have exited (a zombie
        // before the reaping) only the main thread is left to count.
        waited_us = run_queue_wait_us(pid).unwrap_or(0).max(waited_us);
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value to be overwritten.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4(2) on our own child, with valid pointers.
        let r = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut usage) };
        if r < 0 {
            forget(pid);
            return Err(io::Error::last_os_error());
        }
        if r == pid as i32 {
            forget(pid);
            let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
            return Ok(Finished {
                status: std::process::ExitStatus::from_raw(status),
                cpu_us: us(usage.ru_utime) + us(usage.ru_stime),
                run_queue_wait_us: waited_us,
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            forget(pid);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("pid {pid} still running after {timeout:?}; killed"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Memory of a process, KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Mem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// VmRSS and VmHWM of `pid`.
pub fn mem(pid: u32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Mem {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// CPU time (user + system) a process used so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks of every process in the process group led by `leader` (a
/// JVM that a launcher script started, say).
pub fn group_cpu_ticks(leader: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut ticks = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = text.rfind(')').and_then(|i| text.get(i + 2..)) else {
            continue;
        };
        // The process group is field 5 of the line, 3 here.
        if rest.split_whitespace().nth(2).and_then(|g| g.parse::<u32>().ok()) == Some(leader) {
            ticks += cpu_ticks(pid).unwrap_or(0);
        }
    }
    ticks
}

/// Time the threads of `pid` spent runnable but waiting for a CPU (run
/// queue delay, /proc/PID/task/*/schedstat), µs; threads that already
/// exited are not counted. None where schedstat is unavailable.
pub fn run_queue_wait_us(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns = 0u64;
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        // "<on-CPU ns> <run queue wait ns> <timeslices>"
        if let Some(wait) = text.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()) {
            ns += wait;
            any = true;
        }
    }
    any.then_some(ns / 1000)
}

/// Clock ticks per second.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Share of the last 10 s in which some runnable task waited for a CPU
/// (Linux pressure stall information), percent; NaN where unavailable.
pub fn cpu_pressure() -> f64 {
    std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("some"))
                .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("avg10=")))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

/// What the results were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub mem_total_kib: u64,
    pub arch: &'static str,
    /// Block device holding the work directory, its filesystem and whether
    /// the kernel calls it rotational (virtual disks often claim so).
    pub disk: String,
}

pub fn machine(work_dir: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Machine {
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cpu_model,
        kernel,
        mem_total_kib,
        arch: std::env::consts::ARCH,
        disk: disk_of(work_dir),
    }
}

/// "vda (ext4, rotational=1)" for the mount holding `dir`.
fn disk_of(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?, f.next()?))
        })
        .filter(|(_, point, _)| dir.starts_with(point))
        .max_by_key(|(_, point, _)| point.len());
    match best {
        Some((dev, point, fs)) => {
            let name = dev.rsplit('/').next().unwrap_or(dev);
            let rot = std::fs::read_to_string(format!("/sys/block/{name}/queue/rotational"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            format!("{dev} on {point} ({fs}, rotational={rot})")
        }
        None => "unknown".into(),
    }
}
