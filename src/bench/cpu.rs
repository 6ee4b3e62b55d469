//! Where the CPU went during a run: processor time of the workers, of the bench itself (which
//! serves the sandbox marketplace), and of the PostgreSQL, Redis and RabbitMQ servers when they
//! run on this machine, read from `/proc` (Linux; elsewhere nothing is reported). Together with
//! the machine's idle time this says what bounds a run: a saturated machine, or waiting.

use serde::Serialize;

/// Linux reports process CPU in clock ticks of `USER_HZ`, which is 100 on every architecture
/// it runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// Who took the CPU: `(name, process names in /proc/*/comm)`; workers and the bench itself are
/// counted by process id.
const SERVERS: [(&str, &str); 3] = [
    ("postgresql", "postgres"),
    ("redis", "redis-server"),
    ("rabbitmq", "beam.smp"),
];

/// CPU seconds so far, by who took them, and the machine's busy and total time.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    workers: f64,
    bench: f64,
    servers: [f64; 3],
    machine_busy: f64,
    machine_total: f64,
}

/// CPU per posting over a run, in microseconds, and how busy the machine was.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuSplit {
    pub workers_us: f64,
    pub bench_and_sandbox_us: f64,
    pub postgresql_us: f64,
    pub redis_us: f64,
    pub rabbitmq_us: f64,
    /// Share of the machine's CPU time that was busy (all processes), 0–1.
    pub machine_busy: f64,
}

impl CpuSplit {
    /// Postings/s `cores` could give if the workers cost nothing: what bounds a run on a
    /// machine that also runs the servers. `None` when nothing else was seen using CPU.
    pub fn ceiling_without_workers(&self, cores: usize) -> Option<f64> {
        let others_us =
            self.bench_and_sandbox_us + self.postgresql_us + self.redis_us + self.rabbitmq_us;
        (others_us > 0.0).then(|| cores as f64 * 1e6 / others_us)
    }
}

fn process_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

fn machine() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3)? + cpu.get(4).unwrap_or(&0.0);
    Some(((total - idle) / TICKS_PER_SECOND, total / TICKS_PER_SECOND))
}

impl Snapshot {
    /// Reads the counters now; `workers` are the worker processes' ids.
    pub fn take(workers: &[u32]) -> Self {
        let mut snapshot = Self {
            workers: workers
                .iter()
                .filter_map(|p| process_seconds(&p.to_string()))
                .sum(),
            bench: process_seconds("self").unwrap_or(0.0),
            ..Self::default()
        };
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let pid = entry.file_name().to_string_lossy().into_owned();
                if !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
                    continue;
                };
                if let Some(i) = SERVERS.iter().position(|(_, c)| *c == comm.trim()) {
                    snapshot.servers[i] += process_seconds(&pid).unwrap_or(0.0);
                }
            }
        }
        if let Some((busy, total)) = machine() {
            snapshot.machine_busy = busy;
            snapshot.machine_total = total;
        }
        snapshot
    }

    /// What was spent between `self` and `later`, per posting of `postings`.
    pub fn split(&self, later: &Self, postings: usize) -> CpuSplit {
        let per = |a: f64, b: f64| (b - a).max(0.0) * 1e6 / postings.max(1) as f64;
        let total = later.machine_total - self.machine_total;
        CpuSplit {
            workers_us: per(self.workers, later.workers),
            bench_and_sandbox_us: per(self.bench, later.bench),
            postgresql_us: per(self.servers[0], later.servers[0]),
            redis_us: per(self.servers[1], later.servers[1]),
            rabbitmq_us: per(self.servers[2], later.servers[2]),
            machine_busy: if total > 0.0 {
                (later.machine_busy - self.machine_busy) / total
            } else {
                0.0
            },
        }
    }
}

impl CpuSplit {
    /// All the CPU per posting that was accounted for.
    pub fn total_us(&self) -> f64 {
        self.workers_us
            + self.bench_and_sandbox_us
            + self.postgresql_us
            + self.redis_us
            + self.rabbitmq_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_the_machine_has_a_total() {
        let busy: f64 = (0..200_000u64).map(|n| (n as f64).sqrt()).sum();
        assert!(busy > 0.0);
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(process_seconds("self").is_some());
            let (b, t) = machine().expect("/proc/stat");
            assert!(t >= b && t > 0.0);
        }
    }

    #[test]
    fn the_ceiling_is_the_cores_over_everything_but_the_workers() {
        let split = CpuSplit {
            workers_us: 80.0,
            bench_and_sandbox_us: 20.0,
            postgresql_us: 60.0,
            redis_us: 5.0,
            rabbitmq_us: 15.0,
            machine_busy: 0.9,
        };
        assert_eq!(split.ceiling_without_workers(2), Some(20_000.0));
        let remote = CpuSplit {
            bench_and_sandbox_us: 0.0,
            postgresql_us: 0.0,
            redis_us: 0.0,
            rabbitmq_us: 0.0,
            ..split
        };
        assert_eq!(remote.ceiling_without_workers(2), None);
    }
}
