//! Which CPUs the module's threads run on (`BACKGROUND_CPUS`).
//!
//! Redis can keep its main thread on CPUs of its own (`server-cpulist`), as it does its background
//! jobs (`bio-cpulist`); the module's threads then belong on the others. On two CPUs shared by
//! everything, the drain's threads delay a command when they hold the CPU it wakes up on, for as long
//! as the scheduler lets them run on (docs/performance.md measures it). Threads the module starts at
//! load keep every CPU Redis started with; threads started later from the main thread would take
//! `server-cpulist`'s CPUs from it. So a list, when given, is set on every thread the module starts.

use crate::settings::cpu_list;

/// Keeps the calling thread to `cpus` (none: leaves it as it is).
pub fn pin_this_thread(cpus: &[usize]) -> Result<(), String> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: a zeroed `cpu_set_t` is an empty set; `CPU_SET` is given numbers below its size
    // (`cpu_list` refuses more than `MAX_CPU`, which is `CPU_SETSIZE - 1`).
    let status = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if status == 0 {
        Ok(())
    } else {
        Err(format!(
            "could not keep the thread to CPUs {cpus:?}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// The CPUs the calling thread may run on now.
pub fn allowed() -> Vec<usize> {
    // SAFETY: the set is written by the kernel, up to its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..=crate::settings::MAX_CPU)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// The CPUs the system has online (`/sys/devices/system/cpu/online`), or, where that cannot be
/// read, those the calling thread may run on.
pub fn online() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|text| cpu_list(text.trim()).ok())
        .filter(|cpus| !cpus.is_empty())
        .unwrap_or_else(allowed)
}

/// Checks a `BACKGROUND_CPUS` list at load: each CPU it names must be online. Not the main
/// thread's own CPUs: loaded with `MODULE LOAD` after `server-cpulist` took effect, those are
/// exactly the ones the list should leave out. A CPU online but outside the container's cpuset
/// is refused by the kernel when a thread starts, which logs it and leaves the thread where it is.
pub fn check(list: &str) -> Result<Vec<usize>, String> {
    let cpus = cpu_list(list)?;
    let online = online();
    let missing: Vec<usize> = cpus
        .iter()
        .copied()
        .filter(|c| !online.contains(c))
        .collect();
    if !missing.is_empty() && !online.is_empty() {
        return Err(format!(
            "BACKGROUND_CPUS names CPUs {missing:?} that are not online (online: {online:?})"
        ));
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_kept_to_the_cpus_given_and_others_are_refused() {
        let all = allowed();
        assert!(!all.is_empty());
        let one = *all.last().unwrap_or(&0);
        let seen = std::thread::spawn(move || pin_this_thread(&[one]).map(|()| allowed()))
            .join()
            .ok();
        assert_eq!(seen, Some(Ok(vec![one])));
        // This thread is untouched.
        assert_eq!(allowed(), all);
        assert_eq!(pin_this_thread(&[]), Ok(()));
        assert_eq!(check(""), Ok(vec![]));
        assert_eq!(check(&one.to_string()), Ok(vec![one]));
        let err = check(&crate::settings::MAX_CPU.to_string());
        if !online().contains(&crate::settings::MAX_CPU) {
            assert!(err.is_err_and(|e| e.contains("not online")));
        }
        assert!(all.iter().all(|c| online().contains(c)));
        assert!(check("2-1").is_err());
    }
}
