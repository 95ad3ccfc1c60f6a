//! The seccomp filter every agent process runs under.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// Syscalls refused with EPERM: ways to regain privilege, inspect or alter
/// other processes, reach the kernel's less-hardened surfaces, or change
/// host-wide state.
const DENIED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_userfaultfd,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
    libc::SYS_quotactl,
    libc::SYS_lookup_dcookie,
    libc::SYS_vhangup,
];

#[derive(Debug, thiserror::Error)]
#[error("building the seccomp filter: {0}")]
pub struct FilterError(String);

fn arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
    #[cfg(not(target_arch = "aarch64"))]
    TargetArch::x86_64
}

/// Socket families a bottle may open: local sockets and IP (which the
/// network namespace confines to loopback and the forwarded sidecars), and
/// netlink's routing protocol, which `getifaddrs` and resolvers use to look
/// at the bottle's own interfaces. Every other family (`AF_VSOCK`, which no
/// network namespace isolates and which reaches the hypervisor and host
/// services; `AF_PACKET`, `AF_KEY`, `AF_ALG`, `AF_XDP`, `AF_BLUETOOTH`, ...,
/// each also a kernel module loaded on demand) is refused with
/// `EAFNOSUPPORT`, the answer programs expect for a family the kernel lacks.
const FAMILIES: &[i32] = &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK];

/// Terminal ioctls refused with EPERM: pushing bytes into a terminal's
/// input queue (`TIOCSTI`, CVE-2017-5226; the console's paste buffer through
/// `TIOCLINUX`, CVE-2023-28100), redirecting the console (`TIOCCONS`), and
/// swapping in another line discipline (`TIOCSETD`, a long line of kernel
/// bugs). The agent's own terminal is made inside the bottle, so none of
/// these could reach the user's; this is the second layer.
const IOCTLS: &[u64] = &[libc::TIOCSTI, libc::TIOCLINUX, libc::TIOCCONS, libc::TIOCSETD];

/// On x86_64, a syscall number with this bit set is an x32 call: another
/// table of the same syscalls, under the same audit arch. Filters that name
/// syscalls by number would miss them, so they are all refused.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, FilterError> {
    // Dword: the kernel reads these arguments as 32-bit ints, so only the
    // low half may decide (an ioctl number with high bits set is the same
    // ioctl to the kernel, and must be the same to the filter).
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| FilterError(e.to_string()))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, FilterError> {
    SeccompRule::new(conds).map_err(|e| FilterError(e.to_string()))
}

fn compile(filter: Result<SeccompFilter, seccompiler::BackendError>) -> Result<BpfProgram, FilterError> {
    let filter = filter.map_err(|e| FilterError(e.to_string()))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| FilterError(e.to_string()))
}

/// The filters, applied in order (the kernel runs all of them and the
/// strictest answer wins): `clone3` answers ENOSYS (so libc falls back to
/// `clone`, whose flags a filter can see); the deny list, `clone` with
/// `CLONE_NEWUSER` and the terminal ioctls answer EPERM; socket families
/// outside [`FAMILIES`] answer EAFNOSUPPORT; on x86_64, x32 calls answer
/// ENOSYS. Each filter kills the process on a foreign architecture.
pub fn filters() -> Result<Vec<BpfProgram>, FilterError> {
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, vec![]);
    let f1 =
        compile(SeccompFilter::new(clone3, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch()))?;

    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|s| (*s, vec![])).collect();
    let newuser = libc::CLONE_NEWUSER as u64;
    let newuser = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(newuser), newuser)
        .map_err(|e| FilterError(e.to_string()))?;
    rules.insert(libc::SYS_clone, vec![rule(vec![newuser])?]);
    let ioctls = IOCTLS.iter().map(|&req| rule(vec![cond(1, SeccompCmpOp::Eq, req)?])).collect::<Result<_, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctls);
    let f2 =
        compile(SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch()))?;

    // A family outside the list: every "not equal" must hold.
    let other_family = FAMILIES.iter().map(|&f| cond(0, SeccompCmpOp::Ne, f as u64)).collect::<Result<Vec<_>, _>>()?;
    // Netlink, but not its routing protocol.
    let other_netlink = vec![
        cond(0, SeccompCmpOp::Eq, libc::AF_NETLINK as u64)?,
        cond(2, SeccompCmpOp::Ne, libc::NETLINK_ROUTE as u64)?,
    ];
    let mut families = BTreeMap::new();
    families.insert(libc::SYS_socket, vec![rule(other_family)?, rule(other_netlink)?]);
    // socketpair makes only local sockets.
    families.insert(libc::SYS_socketpair, vec![rule(vec![cond(0, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?])?]);
    let f3 = compile(SeccompFilter::new(
        families,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
        arch(),
    ))?;

    let mut all = vec![f1, f2, f3];
    #[cfg(target_arch = "x86_64")]
    all.push(x32_filter());
    Ok(all)
}

/// Refuses every x32 syscall (ENOSYS, as on a kernel without x32), after
/// the same architecture check seccompiler's filters start with.
#[cfg(target_arch = "x86_64")]
fn x32_filter() -> BpfProgram {
    // BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_JMP|BPF_JGE|BPF_K, BPF_RET|BPF_K.
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let op = |code, jt, jf, k| seccompiler::sock_filter { code, jt, jf, k };
    vec![
        op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        op(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(JGE_K, 0, 1, X32_SYSCALL_BIT),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}
