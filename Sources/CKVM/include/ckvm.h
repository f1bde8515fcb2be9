// C shim over <linux/kvm.h>: Swift cannot import the _IO*/_IOW* request
// macros, so each request number is re-exported as a constant, and ioctl's
// variadic signature is wrapped in fixed-arity functions.
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <linux/if_tun.h>
#include <linux/if.h>
#include <sys/ioctl.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <signal.h>
#include <malloc.h>
#include <stdint.h>
// Named here too so that adding it invalidates module caches built before it
// (a header new in the umbrella directory alone goes unnoticed).
#include "ckvm_cpuid.h"
#include "ckvm_uffd.h"

// System ioctls.
static const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long CKVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;

// VM ioctls.
static const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long CKVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long CKVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long CKVM_IRQFD = KVM_IRQFD;
static const unsigned long CKVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned long CKVM_SET_GSI_ROUTING = KVM_SET_GSI_ROUTING;
static const unsigned long CKVM_SIGNAL_MSI = KVM_SIGNAL_MSI;
static const unsigned long CKVM_ENABLE_CAP = KVM_ENABLE_CAP;
// VM state for snapshots: in-kernel PIC/IO-APIC, PIT, KVM clock.
static const unsigned long CKVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
static const unsigned long CKVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
static const unsigned long CKVM_GET_PIT2 = KVM_GET_PIT2;
static const unsigned long CKVM_SET_PIT2 = KVM_SET_PIT2;
static const unsigned long CKVM_GET_CLOCK = KVM_GET_CLOCK;
static const unsigned long CKVM_SET_CLOCK = KVM_SET_CLOCK;
// Dirty-page tracking for diff snapshots.
static const unsigned long CKVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;
static const unsigned int CKVM_MEM_LOG_DIRTY_PAGES = KVM_MEM_LOG_DIRTY_PAGES;

// vCPU ioctls.
static const unsigned long CKVM_RUN = KVM_RUN;
static const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CKVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long CKVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long CKVM_SET_FPU = KVM_SET_FPU;
static const unsigned long CKVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long CKVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long CKVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long CKVM_SET_SIGNAL_MASK = KVM_SET_SIGNAL_MASK;
static const unsigned long CKVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
// vCPU state for snapshots (the rest of what KVM holds per vCPU).
static const unsigned long CKVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long CKVM_GET_FPU = KVM_GET_FPU;
static const unsigned long CKVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long CKVM_GET_XSAVE2 = KVM_GET_XSAVE2;
static const unsigned long CKVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long CKVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long CKVM_SET_XCRS = KVM_SET_XCRS;
static const unsigned long CKVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long CKVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;

static const uint32_t CKVM_IOEVENTFD_FLAG_PIO = KVM_IOEVENTFD_FLAG_PIO;
static const uint32_t CKVM_IOEVENTFD_FLAG_DEASSIGN = KVM_IOEVENTFD_FLAG_DEASSIGN;
static const uint32_t CKVM_IOEVENTFD_FLAG_DATAMATCH = KVM_IOEVENTFD_FLAG_DATAMATCH;
static const uint32_t CKVM_IRQFD_FLAG_DEASSIGN = KVM_IRQFD_FLAG_DEASSIGN;

// TUN/TAP.
static const unsigned long CKVM_TUNSETIFF = TUNSETIFF;
static const unsigned long CKVM_TUNSETOFFLOAD = TUNSETOFFLOAD;
static const unsigned long CKVM_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
static const unsigned long CKVM_TUNGETIFF = TUNGETIFF;
static const unsigned long CKVM_TUNSETQUEUE = TUNSETQUEUE;

// struct ifreq keeps its name and flags in anonymous unions Swift cannot
// name; these fill and read it. Both return ioctl's result (-1 and errno).
// ckvm_tun_set_interface attaches `fd` (an open /dev/net/tun) to the
// interface `name` (at most IFNAMSIZ-1 bytes) with `flags` (IFF_TAP, ...).
int ckvm_tun_set_interface(int fd, const char *name, short flags);
// ckvm_tun_set_queue attaches (IFF_ATTACH_QUEUE) or detaches
// (IFF_DETACH_QUEUE) one queue of a multi-queue tap: TUNSETQUEUE.
int ckvm_tun_set_queue(int fd, short flags);
// ckvm_tun_get_interface reports the interface an open tun/tap fd is
// attached to: its name (into `name`, IFNAMSIZ bytes) and flags.
int ckvm_tun_get_interface(int fd, char *name, short *flags);

// readv/writev straight through syscall(2): glibc's wrappers are
// cancellation points and bracket every call with two extra function calls
// the data plane (one call per frame) does not need; Swiftlet never cancels
// threads. Same results: -1 and errno on failure.
#include <sys/uio.h>
static inline long ckvm_readv(int fd, const struct iovec *vectors, int count) {
    return syscall(SYS_readv, fd, vectors, count);
}
static inline long ckvm_writev(int fd, const struct iovec *vectors, int count) {
    return syscall(SYS_writev, fd, vectors, count);
}

// ioctl is variadic in C; Swift needs fixed signatures.
static inline int ckvm_ioctl_pointer(int fd, unsigned long request, void *argument) {
    return ioctl(fd, request, argument);
}
static inline int ckvm_ioctl_value(int fd, unsigned long request, unsigned long argument) {
    return ioctl(fd, request, argument);
}

// struct kvm_cpuid2 and struct kvm_msrs end in flexible arrays; these give
// their header sizes so Swift can size the allocations.
static inline unsigned long ckvm_cpuid2_header_size(void) { return sizeof(struct kvm_cpuid2); }
static inline unsigned long ckvm_msrs_header_size(void) { return sizeof(struct kvm_msrs); }
static inline unsigned long ckvm_msr_list_header_size(void) { return sizeof(struct kvm_msr_list); }
static inline unsigned long ckvm_irq_routing_header_size(void) { return sizeof(struct kvm_irq_routing); }


// kvm_run's exit data lives in an anonymous union; these accessors give Swift
// a stable view of the parts the VMM reads.
static inline uint8_t ckvm_run_io_direction(const struct kvm_run *run) { return run->io.direction; }
static inline uint8_t ckvm_run_io_size(const struct kvm_run *run) { return run->io.size; }
static inline uint16_t ckvm_run_io_port(const struct kvm_run *run) { return run->io.port; }
static inline uint32_t ckvm_run_io_count(const struct kvm_run *run) { return run->io.count; }
static inline uint64_t ckvm_run_io_data_offset(const struct kvm_run *run) { return run->io.data_offset; }
static inline uint64_t ckvm_run_mmio_address(const struct kvm_run *run) { return run->mmio.phys_addr; }
static inline uint32_t ckvm_run_mmio_length(const struct kvm_run *run) { return run->mmio.len; }
static inline uint8_t ckvm_run_mmio_is_write(const struct kvm_run *run) { return run->mmio.is_write; }
static inline uint8_t *ckvm_run_mmio_data(struct kvm_run *run) { return run->mmio.data; }
static inline uint32_t ckvm_run_internal_suberror(const struct kvm_run *run) { return run->internal.suberror; }
static inline uint32_t ckvm_run_internal_ndata(const struct kvm_run *run) { return run->internal.ndata; }
static inline uint64_t ckvm_run_internal_data(const struct kvm_run *run, uint32_t index) {
    return index < 16 ? run->internal.data[index] : 0;
}
static inline uint32_t ckvm_run_system_event_type(const struct kvm_run *run) { return run->system_event.type; }
static inline uint64_t ckvm_run_fail_entry_reason(const struct kvm_run *run) { return run->fail_entry.hardware_entry_failure_reason; }
static inline uint64_t ckvm_run_hardware_exit_reason(const struct kvm_run *run) { return run->hw.hardware_exit_reason; }

// kvm_run.immediate_exit is written by other threads (kicks) while the vCPU
// thread reads and clears it around KVM_RUN: atomic accesses, so neither the
// compiler nor the CPU can tear, cache or reorder them against the kick signal.
static inline void ckvm_run_set_immediate_exit(struct kvm_run *run, uint8_t value) {
    __atomic_store_n(&run->immediate_exit, value, __ATOMIC_SEQ_CST);
}
static inline uint8_t ckvm_run_immediate_exit(const struct kvm_run *run) {
    return __atomic_load_n(&run->immediate_exit, __ATOMIC_SEQ_CST);
}

// Installs a do-nothing handler for `signal_number` without SA_RESTART, so
// the signal interrupts a blocking KVM_RUN with EINTR (how vCPUs are kicked).
int ckvm_install_kick_handler(int signal_number);

// getrandom(2): Glibc's Swift module does not export <sys/random.h>.
static inline long ckvm_getrandom(void *buffer, unsigned long length, unsigned int flags) { return getrandom(buffer, length, flags); }

// Names the calling thread (shown by top -H, gdb, /proc).
static inline int ckvm_set_thread_name(const char *name) { return prctl(PR_SET_NAME, name, 0, 0, 0); }
// The calling thread's name into `buffer`, which must hold 16 bytes.
static inline int ckvm_get_thread_name(char *buffer) { return prctl(PR_GET_NAME, buffer, 0, 0, 0); }

// Installs a seccomp-BPF program (`count` 8-byte sock_filter instructions)
// on the calling thread, after PR_SET_NO_NEW_PRIVS as seccomp requires of an
// unprivileged caller. Returns 0, or -1 with errno.
static inline int ckvm_install_seccomp_filter(const void *instructions, unsigned short count) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    struct sock_fprog program = { .len = count, .filter = (struct sock_filter *)instructions };
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program);
}

// Caps glibc's malloc arenas (M_ARENA_MAX): each extra thread would otherwise
// get an arena of its own, about 0.2 MiB resident.
static inline int ckvm_limit_malloc_arenas(int count) { return mallopt(M_ARENA_MAX, count); }

// One 16-bit access that cannot tear: virtqueue indexes and flags are shared
// with a guest that updates them while the device reads them.
static inline uint16_t ckvm_load_shared_u16(const void *address) {
    return __atomic_load_n((const uint16_t *)address, __ATOMIC_RELAXED);
}
static inline void ckvm_store_shared_u16(void *address, uint16_t value) {
    __atomic_store_n((uint16_t *)address, value, __ATOMIC_RELAXED);
}

// A struct kvm_dirty_log for `slot` filling `bitmap` (its pointer is in an
// anonymous union Swift cannot name).
static inline struct kvm_dirty_log ckvm_dirty_log(uint32_t slot, void *bitmap) {
    struct kvm_dirty_log log = {0};
    log.slot = slot;
    log.dirty_bitmap = bitmap;
    return log;
}

// Bitmap words set by any thread that writes guest memory and read-and-cleared
// by a snapshot: one atomic OR and one atomic exchange.
static inline void ckvm_atomic_or_u64(uint64_t *word, uint64_t bits) {
    __atomic_fetch_or(word, bits, __ATOMIC_RELAXED);
}
static inline uint64_t ckvm_atomic_take_u64(uint64_t *word) {
    return __atomic_exchange_n(word, 0, __ATOMIC_RELAXED);
}

// The running program's loadable segments (PT_LOAD) as page-aligned
// [start, start + length) ranges, at most `capacity` of them; returns how many
// (dl_iterate_phdr is in <link.h>, which Swift's Glibc module does not cover).
// `writable[i]` is 1 for a segment with PF_W.
int ckvm_program_segments(uintptr_t *starts, uintptr_t *lengths, int *writable, int capacity);

#endif
