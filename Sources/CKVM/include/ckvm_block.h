// Block I/O calls Swift's Glibc module does not import: fallocate() needs
// _GNU_SOURCE, so it is reached through syscall(), whose variadic signature
// Swift cannot call directly.
#ifndef CKVM_BLOCK_H
#define CKVM_BLOCK_H

#include <linux/falloc.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

// fallocate(2): mode is a FALLOC_FL_* combination. Returns -1 and sets errno on failure.
static inline int ckvm_fallocate(int fd, int mode, long long offset, long long length) {
    return (int)syscall(SYS_fallocate, fd, mode, (off_t)offset, (off_t)length);
}

#endif
