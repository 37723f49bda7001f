//! CPU time of processes from `/proc/<pid>/stat` (user and system time of all their threads),
//! read before and after a run: what each process of a benchmark spent on it.

use std::{future::Future, process::Command};

/// A process by name, and the pids it runs as (several when more than one has that name).
#[derive(Clone, Debug)]
pub struct Process {
    pub name: String,
    pub pids: Vec<u32>,
}

impl Process {
    /// The process `pid`, called `name`.
    pub fn pid(name: &str, pid: u32) -> Process {
        Process {
            name: name.to_owned(),
            pids: vec![pid],
        }
    }

    /// Every running process whose command name (`/proc/<pid>/comm`) is `name`.
    pub fn named(name: &str) -> Process {
        let pids = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim_end() == name)
            })
            .collect();
        Process {
            name: name.to_owned(),
            pids,
        }
    }

    /// Clock ticks of CPU time its pids have used so far; none when it has no pid or one of them
    /// is gone.
    fn ticks(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|pid| ticks_of_pid(*pid)).sum()
    }

    /// `name (pid 1)`, `name (pids 1, 2)` or `name (not running)`.
    pub fn describe(&self) -> String {
        let pids: Vec<String> = self.pids.iter().map(u32::to_string).collect();
        match pids.len() {
            0 => format!("{} (not running)", self.name),
            1 => format!("{} (pid {})", self.name, pids[0]),
            _ => format!("{} (pids {})", self.name, pids.join(", ")),
        }
    }
}

fn ticks_of_pid(pid: u32) -> Option<u64> {
    ticks_of_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks.
pub fn ticks_of_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses itself:
    // the fields are counted from the last ')', where field 3 begins.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut times = after_name.split_whitespace().skip(14 - 3);
    let user: u64 = times.next()?.parse().ok()?;
    let system: u64 = times.next()?.parse().ok()?;
    Some(user + system)
}

/// Clock ticks per second of `/proc`'s times: `getconf CLK_TCK`, else Linux's usual 100.
pub fn ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

/// The processes whose CPU time is read around runs, in the order they are reported.
pub struct Watched {
    processes: Vec<Process>,
    ticks_per_second: u64,
}

impl Watched {
    pub fn new(processes: Vec<Process>) -> Watched {
        Watched {
            processes,
            ticks_per_second: ticks_per_second(),
        }
    }

    pub fn processes(&self) -> &[Process] {
        &self.processes
    }

    /// Runs `run`, and returns with its output the CPU time each process spent meanwhile.
    pub async fn during<T>(&self, run: impl Future<Output = T>) -> (T, CpuSpent) {
        let before = self.ticks();
        let output = run.await;
        let after = self.ticks();
        let ticks = before
            .iter()
            .zip(&after)
            .map(|(before, after)| Some((*after)?.saturating_sub((*before)?)))
            .collect();
        let spent = CpuSpent {
            ticks,
            ticks_per_second: self.ticks_per_second,
        };
        (output, spent)
    }

    fn ticks(&self) -> Vec<Option<u64>> {
        self.processes.iter().map(Process::ticks).collect()
    }
}

/// The CPU time each watched process spent during a run, in the order of `Watched::processes`;
/// none for one that was not running throughout.
#[derive(Clone, Debug)]
pub struct CpuSpent {
    pub ticks: Vec<Option<u64>>,
    pub ticks_per_second: u64,
}

impl CpuSpent {
    /// Microseconds of CPU per call of the run, for each process, when the run made `calls`.
    pub fn micros_per(&self, calls: u64) -> Vec<Option<f64>> {
        let micros_per_tick = 1e6 / self.ticks_per_second as f64;
        self.ticks
            .iter()
            .map(|ticks| Some((*ticks)? as f64 * micros_per_tick / calls.max(1) as f64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_ticks_are_read_after_the_command_name() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 1500 0 3 0 120 35 0 0 20 0 9 0 77";
        assert_eq!(ticks_of_stat(stat), Some(155));
        assert_eq!(ticks_of_stat("4242 (cut short) S 1 2"), None);
    }

    #[tokio::test]
    async fn a_process_that_spins_is_seen_spending_cpu() {
        let itself = Process::pid("itself", std::process::id());
        let watched = Watched::new(vec![itself.clone(), Process::named("no-such-process-name")]);
        let ((), spent) = watched
            .during(async {
                let start = itself.ticks();
                while itself.ticks() == start {
                    std::hint::black_box(start);
                }
            })
            .await;
        assert!(spent.ticks[0].is_some_and(|ticks| ticks >= 1), "{spent:?}");
        assert_eq!(spent.ticks[1], None);
        let per_call = spent.micros_per(1);
        assert!(per_call[0].is_some_and(|micros| micros > 0.0));
        assert_eq!(
            Process::named("no-such-process-name").describe(),
            "no-such-process-name (not running)"
        );
    }
}
