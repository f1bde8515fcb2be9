import CKVM
import Glibc
import HostSystem

/// Swiftlet's own seccomp filters: one allow-list per thread kind, anything
/// else ends the process with SIGSYS (SECCOMP_RET_KILL_PROCESS). The lists
/// come from strace runs of the integration tests (docs/seccomp.md).
///
/// Linux stacks filters: a thread runs under its own filter and those of
/// every thread above it (the one that started it, and so on), so a call
/// passes only if all allow it. Each kind's program is therefore its own
/// rules merged with those of the kinds it starts: the main thread starts
/// vCPU threads again when the guest reboots, the launcher thread starts the
/// device workers (asked by a vCPU thread when the driver activates a
/// device, or by the API thread when a drive is swapped), so that the vCPU
/// and API filters need not allow the workers' I/O.
public enum DefaultSeccompFilters {
    typealias Kind = SeccompFilters.ThreadKind
    typealias Rule = SeccompRule

    /// Every thread: the Swift runtime and glibc (allocation, locks, thread
    /// exit, abort), clocks, and writing an error line to stderr.
    static let common: [Rule] = [
        Rule("brk"), Rule("mmap"), Rule("munmap"), Rule("mremap"), Rule("mprotect"), Rule("madvise"),
        Rule("futex"), Rule("sched_yield"), Rule("sched_getaffinity"), Rule("getrandom"),
        Rule("rt_sigprocmask"), Rule("rt_sigreturn"), Rule("sigaltstack"), Rule("restart_syscall"),
        Rule("clock_gettime"), Rule("clock_nanosleep"), Rule("nanosleep"), Rule("gettimeofday"),
        Rule("gettid"), Rule("getpid"), Rule("tgkill"), Rule("rseq"),
        Rule("exit"), Rule("exit_group"),
        Rule("write"), Rule("close"),
    ]

    /// What starting a HostThread takes in the starting thread (and in the
    /// new thread before its own filter is in place): clone3, the stack, the
    /// name, and installing the child's filter.
    static let startsThreads: [Rule] = [
        Rule("clone3"), Rule("clone"), Rule("set_robust_list"),
        Rule.allow("prctl", argument: 0, in: [15, 38]),  // PR_SET_NAME, PR_SET_NO_NEW_PRIVS
        Rule.allow("seccomp", argument: 0, in: [1]),  // SECCOMP_SET_MODE_FILTER
    ]

    /// An epoll loop over eventfds (every device worker, the API thread).
    static let eventLoop: [Rule] = [
        Rule("epoll_wait"), Rule("epoll_pwait"), Rule("epoll_pwait2"), Rule("epoll_ctl"),
        Rule("read"), Rule("write"), Rule("readv"), Rule("writev"),
    ]

    static func requests(_ values: UInt) -> UInt32 { UInt32(truncatingIfNeeded: values) }

    /// KVM ioctls a vCPU thread makes: KVM_RUN and register access on its
    /// own fd, interrupts and eventfd wiring on the VM fd when the guest
    /// programs a device (MSI-X, DRIVER_OK).
    static let vcpuIoctls: [UInt32] = [
        CKVM_RUN, CKVM_GET_REGS, CKVM_SET_REGS, CKVM_GET_SREGS, CKVM_SET_SREGS, CKVM_GET_MSRS, CKVM_SET_MSRS,
        CKVM_GET_LAPIC, CKVM_SET_LAPIC, CKVM_GET_MP_STATE, CKVM_SET_MP_STATE, CKVM_GET_VCPU_EVENTS, CKVM_SET_FPU,
        CKVM_IRQ_LINE, CKVM_SIGNAL_MSI, CKVM_IRQFD, CKVM_IOEVENTFD, CKVM_SET_GSI_ROUTING,
    ].map(requests)

    /// fcntl commands a thread may use: flags of its own descriptors, and the
    /// disk-image locks (F_OFD_*) a drive swap takes.
    static let fcntlCommands: [UInt32] = [1, 2, 3, 4, 36, 37]  // F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_OFD_GETLK, F_OFD_SETLK

    /// Each kind's own rules (before merging with the kinds it starts).
    static func ownRules(_ kind: Kind) -> [Rule] {
        switch kind {
        case .vcpu:
            return eventLoop + [
                Rule.allow("ioctl", argument: 1, in: vcpuIoctls),
                // Activation of a device: its worker's epoll, eventfds and
                // timers are made here; the launcher starts the thread.
                Rule("epoll_create1"), Rule("eventfd2"), Rule("timerfd_create"), Rule("timerfd_settime"),
                Rule.allow("fcntl", argument: 1, in: fcntlCommands),
            ]
        case .api:
            return eventLoop + [
                Rule("accept4"), Rule("accept"), Rule("recvfrom"), Rule("sendto"), Rule("recvmsg"), Rule("sendmsg"),
                Rule("shutdown"), Rule("getsockopt"), Rule("setsockopt"),
                Rule.allow("fcntl", argument: 1, in: fcntlCommands),
                // PUT /logger, /metrics, PATCH /drives, kernel and initrd files: opened here.
                Rule("openat"), Rule("fstat"), Rule("newfstatat"), Rule("statx"), Rule("lseek"), Rule("pread64"),
                Rule("ftruncate"), Rule("fsync"), Rule("fdatasync"), Rule("ppoll"), Rule("poll"),
                Rule("timerfd_create"), Rule("timerfd_settime"), Rule("timerfd_gettime"), Rule("eventfd2"),
                Rule("epoll_create1"), Rule("unlink"), Rule("unlinkat"), Rule("kill"),
                // Actions that interrupt the guest (SendCtrlAltDel, a drive's config change).
                Rule.allow("ioctl", argument: 1, in: [requests(CKVM_IRQ_LINE), requests(CKVM_SIGNAL_MSI)]),
            ]
        case .block:
            return eventLoop + [
                Rule("pread64"), Rule("pwrite64"), Rule("preadv"), Rule("pwritev"), Rule("preadv2"), Rule("pwritev2"),
                Rule("fsync"), Rule("fdatasync"), Rule("fallocate"), Rule("lseek"), Rule("fstat"),
                Rule("timerfd_settime"), Rule("timerfd_gettime"),
                Rule.allow("ioctl", argument: 1, in: [requests(CKVM_IRQ_LINE), requests(CKVM_SIGNAL_MSI)]),
            ]
        case .net:
            return eventLoop + [
                Rule("timerfd_settime"), Rule("timerfd_gettime"),
                Rule.allow("ioctl", argument: 1, in: [requests(CKVM_IRQ_LINE), requests(CKVM_SIGNAL_MSI)]),
            ]
        case .rng:
            return eventLoop + [
                Rule("timerfd_settime"), Rule("timerfd_gettime"),
                Rule.allow("ioctl", argument: 1, in: [requests(CKVM_IRQ_LINE), requests(CKVM_SIGNAL_MSI)]),
            ]
        case .console:
            return eventLoop + [
                Rule.allow("ioctl", argument: 1, in: [requests(CKVM_IRQ_LINE), requests(CKVM_SIGNAL_MSI)]),
            ]
        case .vsock:
            return eventLoop + [
                // Host side: a Unix listener at uds_path, and connections to it.
                Rule.allow("socket", argument: 0, in: [1]),  // AF_UNIX
                Rule("connect"), Rule("accept4"), Rule("accept"), Rule("recvfrom"), Rule("sendto"), Rule("recvmsg"),
                Rule("sendmsg"), Rule("shutdown"), Rule("getsockopt"), Rule("setsockopt"),
                Rule.allow("fcntl", argument: 1, in: fcntlCommands),
                Rule.allow("ioctl", argument: 1, in: [requests(CKVM_IRQ_LINE), requests(CKVM_SIGNAL_MSI)]),
            ]
        case .serialOut:
            return eventLoop + [Rule("poll"), Rule("ppoll")]
        case .launcher:
            // Waits on its eventfd and calls pthread_create; answers on the requester's eventfd.
            return [Rule("read"), Rule("write")]
        case .main:
            // The main thread builds the VM again after a reboot (opens the
            // kernel, disks, /dev/kvm and the tap; every KVM ioctl) and
            // serves console input and signals. Only filesystem changes,
            // process creation and new network sockets stay out.
            return eventLoop + [
                Rule("ioctl"), Rule("openat"), Rule("open"), Rule("fstat"), Rule("newfstatat"), Rule("statx"),
                Rule("lseek"), Rule("pread64"), Rule("pwrite64"), Rule("fsync"), Rule("fdatasync"),
                Rule.allow("fcntl", argument: 1, in: fcntlCommands),
                Rule("epoll_create1"), Rule("eventfd2"), Rule("signalfd4"), Rule("timerfd_create"), Rule("timerfd_settime"),
                Rule("rt_sigaction"), Rule("poll"), Rule("ppoll"), Rule("getrlimit"), Rule("prlimit64"), Rule("uname"),
                Rule("sysinfo"), Rule("sched_getaffinity"), Rule("dup"), Rule("getuid"), Rule("geteuid"),
                Rule("shutdown"), Rule("recvfrom"), Rule("sendto"), Rule("accept4"),
                Rule("unlink"), Rule("unlinkat"),
            ]
        }
    }

    /// The kinds a kind's threads start (whose calls its filter must allow too).
    static func startedBy(_ kind: Kind) -> [Kind] {
        switch kind {
        case .main: [.vcpu, .api, .launcher]
        case .launcher: [.block, .net, .rng, .console, .vsock, .serialOut]
        default: []
        }
    }

    /// A kind's rules merged with those of every kind below it.
    static func rules(_ kind: Kind) -> [Rule] {
        var result = common + ownRules(kind)
        let children = startedBy(kind)
        if !children.isEmpty { result += startsThreads }
        for child in children { result += rules(child) }
        return result
    }

    /// The programs, one per thread kind.
    public static func programs() throws(SeccompProgramError) -> [SeccompFilters.ThreadKind: [UInt64]] {
        var result: [SeccompFilters.ThreadKind: [UInt64]] = [:]
        for kind in SeccompFilters.ThreadKind.allCases {
            result[kind] = try SeccompProgram.build(allowing: rules(kind))
        }
        return result
    }
}
