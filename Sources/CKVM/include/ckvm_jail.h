// Namespace, mount and device-number calls swiftlet-jailer needs that Swift's
// Glibc module does not import (pivot_root has no glibc wrapper at all;
// makedev is a macro; unshare/setns need _GNU_SOURCE).
#ifndef CKVM_JAIL_H
#define CKVM_JAIL_H

#include <errno.h>
#include <linux/sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <unistd.h>
#include <grp.h>
#include <sys/resource.h>

static inline int ckvm_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}
// Raw syscalls: glibc declares unshare/setns only under _GNU_SOURCE, which
// an earlier include of <sched.h> in this module may already have missed.
static inline int ckvm_unshare(int flags) { return (int)syscall(SYS_unshare, flags); }
static inline int ckvm_setns(int fd, int type) { return (int)syscall(SYS_setns, fd, type); }
static inline dev_t ckvm_makedev(unsigned int major_number, unsigned int minor_number) {
    return makedev(major_number, minor_number);
}
static inline int ckvm_setgroups_none(void) { return setgroups(0, (const gid_t *)0); }

/// Sets both the soft and the hard limit of `resource` to `value`.
static inline int ckvm_set_resource_limit(int resource, unsigned long long value) {
    struct rlimit limit = { (rlim_t)value, (rlim_t)value };
    return setrlimit(resource, &limit);
}
/// close_range(first, ~0, 0); -1 with ENOSYS where the kernel or headers lack it.
static inline int ckvm_close_from(unsigned int first) {
#ifdef SYS_close_range
    return (int)syscall(SYS_close_range, first, ~0U, 0);
#else
    errno = ENOSYS;
    return -1;
#endif
}

static const int CKVM_RLIMIT_FSIZE = RLIMIT_FSIZE;
static const int CKVM_RLIMIT_NOFILE = RLIMIT_NOFILE;
static const int CKVM_CLONE_NEWNS = CLONE_NEWNS;
static const int CKVM_CLONE_NEWPID = CLONE_NEWPID;
static const int CKVM_CLONE_NEWNET = CLONE_NEWNET;
static const unsigned long CKVM_MS_BIND = MS_BIND;
static const unsigned long CKVM_MS_REC = MS_REC;
static const unsigned long CKVM_MS_SLAVE = MS_SLAVE;
static const unsigned long CKVM_MS_PRIVATE = MS_PRIVATE;
static const int CKVM_MNT_DETACH = MNT_DETACH;

#endif
