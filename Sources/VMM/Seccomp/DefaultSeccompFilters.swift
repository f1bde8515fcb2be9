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
    /// exit, abort), clocks, eventfd reads and writes, closing descriptors,
    /// a log or error line (which names the thread: PR_GET_NAME).
    static let common: [Rule] = [
        Rule("brk"), Rule("mmap"), Rule("munmap"), Rule("mremap"), Rule("mprotect"), Rule("madvise"),
        Rule("futex"), Rule("sched_yield"), Rule("sched_getaffinity"), Rule("getrandom"),
        Rule("rt_sigprocmask"), Rule("rt_sigreturn"), Rule("sigaltstack"), Rule("restart_syscall"),
        Rule("clock_gettime"), Rule("clock_nanosleep"), Rule("nanosleep"), Rule("gettimeofday"),
        Rule("gettid"), Rule("getpid"), Rule("tgkill"), Rule("rseq"),
        Rule("exit"), Rule("exit_group"),
        Rule("read"), Rule("write"), Rule("close"),
        Rule.allow("prctl", argument: 0, in: [16]),  // PR_GET_NAME
    ]

    /// What starting a HostThread takes in the starting thread (and in the
    /// new thread before its own filter is in place): clone3, the stack, the
    /// name, and installing the child's filter.
    static let startsThreads: [Rule] = [
        Rule("clone3"), Rule("clone"), Rule("set_robust_list"),
        Rule.allow("prctl", argument: 0, in: [15, 38]),  // PR_SET_NAME, PR_SET_NO_NEW_PRIVS
        Rule.allow("seccomp", argument: 0, in: [1]),  // SECCOMP_SET_MODE_FILTER
    ]

    /// An epoll loop over eventfds and timerfds (every device worker, the API thread).
    static let eventLoop: [Rule] = [
        Rule("epoll_wait"), Rule("epoll_pwait"), Rule("epoll_pwait2"), Rule("epoll_ctl"),
        Rule("readv"), Rule("writev"), Rule("timerfd_settime"), Rule("timerfd_gettime"),
    ]

    static func requests(_ values: [UInt]) -> [UInt32] { values.map { UInt32(truncatingIfNeeded: $0) } }

    /// Terminal ioctls of the main thread's raw console mode: TCGETS,
    /// TCSETS, TCSETSW, TCSETSF, TIOCGWINSZ.
    static let terminalIoctls: [UInt32] = [0x5401, 0x5402, 0x5403, 0x5404, 0x5413]

    /// KVM ioctls a vCPU thread makes: KVM_RUN and register access on its
    /// own fd (a crash report reads them), interrupts and eventfd wiring on
    /// the VM fd when the guest programs a device (MSI-X, DRIVER_OK), and the
    /// tap's offloads the driver negotiated.
    static let vcpuIoctls: [UInt32] = requests([
        CKVM_RUN, CKVM_GET_REGS, CKVM_SET_REGS, CKVM_GET_SREGS, CKVM_SET_SREGS, CKVM_GET_MSRS, CKVM_SET_MSRS,
        CKVM_GET_LAPIC, CKVM_SET_LAPIC, CKVM_GET_MP_STATE, CKVM_SET_MP_STATE, CKVM_GET_VCPU_EVENTS, CKVM_SET_FPU,
        CKVM_IRQ_LINE, CKVM_SIGNAL_MSI, CKVM_IRQFD, CKVM_IOEVENTFD, CKVM_SET_GSI_ROUTING, CKVM_TUNSETOFFLOAD,
    ])

    /// Building a VM: /dev/kvm, the VM and vCPU fds, and the taps (the vCPU
    /// set-up, but not KVM_RUN).
    static let buildIoctls: [UInt32] = vcpuIoctls.filter { $0 != UInt32(truncatingIfNeeded: CKVM_RUN) } + requests([
        CKVM_GET_API_VERSION, CKVM_CREATE_VM, CKVM_CHECK_EXTENSION, CKVM_GET_VCPU_MMAP_SIZE, CKVM_GET_SUPPORTED_CPUID,
        CKVM_GET_MSR_INDEX_LIST, CKVM_CREATE_VCPU, CKVM_SET_USER_MEMORY_REGION, CKVM_SET_TSS_ADDR,
        CKVM_SET_IDENTITY_MAP_ADDR, CKVM_CREATE_IRQCHIP, CKVM_CREATE_PIT2, CKVM_ENABLE_CAP, CKVM_SET_CPUID2,
        CKVM_SET_SIGNAL_MASK, CKVM_TUNSETIFF, CKVM_TUNSETVNETHDRSZ, CKVM_TUNGETIFF,
    ]) + snapshotIoctls

    /// Capturing a paused VM's KVM state (the API thread) and restoring it
    /// into a VM being built; never a vCPU thread's business.
    static let snapshotIoctls: [UInt32] = requests([
        CKVM_GET_IRQCHIP, CKVM_SET_IRQCHIP, CKVM_GET_PIT2, CKVM_SET_PIT2, CKVM_GET_CLOCK, CKVM_SET_CLOCK,
        CKVM_SET_VCPU_EVENTS, CKVM_GET_FPU, CKVM_GET_XSAVE, CKVM_GET_XSAVE2, CKVM_SET_XSAVE,
        CKVM_GET_XCRS, CKVM_SET_XCRS, CKVM_GET_DEBUGREGS, CKVM_SET_DEBUGREGS, CKVM_GET_DIRTY_LOG,
    ])

    /// A Uffd snapshot load: the userfaultfd handshake and registration,
    /// and /dev/userfaultfd's USERFAULTFD_IOC_NEW where the syscall is refused.
    static let userfaultIoctls: [UInt32] = requests([CKVM_UFFDIO_API, CKVM_UFFDIO_REGISTER, CKVM_USERFAULTFD_IOC_NEW])

    /// fcntl commands a thread may use: flags of its own descriptors, and the
    /// disk-image locks (F_OFD_*) an open or a drive swap takes.
    static let fcntlCommands: [UInt32] = [1, 2, 3, 4, 36, 37]  // F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_OFD_GETLK, F_OFD_SETLK

    /// A Unix-socket server or client (the API socket, vsock's host side).
    static let unixSockets: [Rule] = [
        Rule.allow("socket", argument: 0, in: [1]),  // AF_UNIX only
        Rule("bind"), Rule("listen"), Rule("connect"), Rule("accept"), Rule("accept4"),
        Rule("recvfrom"), Rule("sendto"), Rule("recvmsg"), Rule("sendmsg"), Rule("shutdown"),
        Rule("getsockopt"), Rule("setsockopt"), Rule("getsockname"), Rule("getpeername"),
    ]

    /// Building a VM from its configuration (the main thread, and the API
    /// thread on InstanceStart): kernel, initrd, disks and logs are opened,
    /// guest memory mapped, every device and its descriptors made.
    static let buildsVMs: [Rule] = unixSockets + [
        Rule.allow("ioctl", argument: 1, in: buildIoctls),
        Rule.allow("fcntl", argument: 1, in: fcntlCommands),
        Rule("openat"), Rule("newfstatat"), Rule("fstat"), Rule("statx"), Rule("lseek"), Rule("pread64"), Rule("readlink"),
        Rule("ftruncate"), Rule("fsync"), Rule("fdatasync"), Rule("dup"),
        Rule("umask"), Rule("chmod"), Rule("fchmod"), Rule("unlink"), Rule("unlinkat"),
        Rule("epoll_create1"), Rule("eventfd2"), Rule("timerfd_create"), Rule("poll"), Rule("ppoll"),
    ]

    /// Each kind's own rules (before merging with the kinds it starts).
    static func ownRules(_ kind: Kind) -> [Rule] {
        switch kind {
        case .vcpu:
            return [
                Rule.allow("ioctl", argument: 1, in: vcpuIoctls),
                // Activation of a device: its worker's epoll, eventfds and
                // timers are made here; the launcher starts the thread.
                Rule("epoll_create1"), Rule("epoll_ctl"), Rule("eventfd2"), Rule("timerfd_create"), Rule("timerfd_settime"),
                Rule.allow("fcntl", argument: 1, in: fcntlCommands),
            ]
        case .api:
            // Requests on the socket, and InstanceStart builds the VM here.
            // PUT /snapshot/create writes the memory and state files
            // atomically (pwrite, fsync, rename); /snapshot/load maps one,
            // or (Uffd backend) creates a userfaultfd, registers guest RAM
            // with it and sends it to the page-fault handler (sendmsg).
            return eventLoop + buildsVMs + [Rule("pwrite64"), Rule("rename"), Rule("renameat"), Rule("renameat2"),
                                            Rule("userfaultfd"), Rule.allow("ioctl", argument: 1, in: userfaultIoctls)]
        case .block:
            return eventLoop + [
                Rule("pread64"), Rule("pwrite64"), Rule("preadv"), Rule("pwritev"), Rule("preadv2"), Rule("pwritev2"),
                Rule("fsync"), Rule("fdatasync"), Rule("fallocate"), Rule("lseek"), Rule("fstat"),
                Rule.allow("ioctl", argument: 1, in: requests([CKVM_IRQ_LINE, CKVM_SIGNAL_MSI])),
            ]
        case .net:
            // TUNSETQUEUE: a multiqueue device detaches the tap queues of pairs the driver has not enabled.
            return eventLoop + [Rule.allow("ioctl", argument: 1, in: requests([CKVM_IRQ_LINE, CKVM_SIGNAL_MSI, CKVM_TUNSETQUEUE]))]
        case .rng, .console:
            return eventLoop + [Rule.allow("ioctl", argument: 1, in: requests([CKVM_IRQ_LINE, CKVM_SIGNAL_MSI]))]
        case .vsock:
            // Host side: connections to and from Unix sockets at uds_path.
            return eventLoop + unixSockets + [
                Rule.allow("fcntl", argument: 1, in: fcntlCommands),
                Rule.allow("ioctl", argument: 1, in: requests([CKVM_IRQ_LINE, CKVM_SIGNAL_MSI])),
            ]
        case .serialOut:
            // Waits for its output to drain (epoll) or for more bytes (its eventfd).
            return eventLoop + [Rule("poll"), Rule("ppoll")]
        case .launcher:
            // Waits on its eventfd and calls pthread_create; answers on the requester's eventfd.
            return []
        case .main:
            // Builds the VM (again after a reboot), serves console input and
            // signals, and removes the API socket at exit.
            return eventLoop + buildsVMs + [
                Rule.allow("ioctl", argument: 1, in: terminalIoctls),
                Rule("signalfd4"), Rule("rt_sigaction"), Rule("prlimit64"), Rule("getrlimit"),
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
