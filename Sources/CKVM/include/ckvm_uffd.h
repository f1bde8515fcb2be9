// userfaultfd (<linux/userfaultfd.h>) for Firecracker's Uffd snapshot
// memory backend, and SCM_RIGHTS descriptor passing over a Unix socket
// (the CMSG_* macros are not importable into Swift).
#ifndef CKVM_UFFD_H
#define CKVM_UFFD_H

#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

static const unsigned long CKVM_UFFDIO_API = UFFDIO_API;
static const unsigned long CKVM_UFFDIO_REGISTER = UFFDIO_REGISTER;
static const unsigned long CKVM_UFFDIO_UNREGISTER = UFFDIO_UNREGISTER;
static const unsigned long CKVM_UFFDIO_COPY = UFFDIO_COPY;
static const unsigned long CKVM_UFFDIO_ZEROPAGE = UFFDIO_ZEROPAGE;
static const unsigned long CKVM_UFFDIO_WAKE = UFFDIO_WAKE;
// /dev/userfaultfd (Linux 6.1+): a new userfaultfd where the syscall is refused.
static const unsigned long CKVM_USERFAULTFD_IOC_NEW = USERFAULTFD_IOC_NEW;

static const uint64_t CKVM_UFFD_API = UFFD_API;
static const uint64_t CKVM_UFFD_FEATURE_EVENT_REMOVE = UFFD_FEATURE_EVENT_REMOVE;
static const uint64_t CKVM_UFFD_FEATURE_EVENT_UNMAP = UFFD_FEATURE_EVENT_UNMAP;
static const uint64_t CKVM_UFFDIO_REGISTER_MODE_MISSING = UFFDIO_REGISTER_MODE_MISSING;
static const uint8_t CKVM_UFFD_EVENT_PAGEFAULT = UFFD_EVENT_PAGEFAULT;
static const uint8_t CKVM_UFFD_EVENT_FORK = UFFD_EVENT_FORK;
static const uint8_t CKVM_UFFD_EVENT_REMAP = UFFD_EVENT_REMAP;
static const uint8_t CKVM_UFFD_EVENT_REMOVE = UFFD_EVENT_REMOVE;
static const uint8_t CKVM_UFFD_EVENT_UNMAP = UFFD_EVENT_UNMAP;
static const int CKVM_UFFD_MESSAGE_SIZE = sizeof(struct uffd_msg);

// userfaultfd(2) has no glibc wrapper.
static inline int ckvm_userfaultfd(int flags) { return (int)syscall(SYS_userfaultfd, flags); }

// One uffd_msg read from the descriptor, its union flattened: for a page
// fault `first` is the address and `flags` the fault flags; for REMOVE and
// UNMAP `first`/`second` are start and end; for REMAP `first`/`second` are
// the old and new address and `third` the length; for FORK `first` is the
// new userfaultfd.
struct ckvm_uffd_event {
    uint8_t event;
    uint64_t flags;
    uint64_t first;
    uint64_t second;
    uint64_t third;
};

static inline struct ckvm_uffd_event ckvm_uffd_decode(const void *bytes) {
    struct uffd_msg message;
    memcpy(&message, bytes, sizeof(message));
    struct ckvm_uffd_event result = {0};
    result.event = message.event;
    switch (message.event) {
    case UFFD_EVENT_PAGEFAULT:
        result.flags = message.arg.pagefault.flags;
        result.first = message.arg.pagefault.address;
        break;
    case UFFD_EVENT_FORK:
        result.first = message.arg.fork.ufd;
        break;
    case UFFD_EVENT_REMAP:
        result.first = message.arg.remap.from;
        result.second = message.arg.remap.to;
        result.third = message.arg.remap.len;
        break;
    case UFFD_EVENT_REMOVE:
    case UFFD_EVENT_UNMAP:
        result.first = message.arg.remove.start;
        result.second = message.arg.remove.end;
        break;
    default:
        break;
    }
    return result;
}

// sendmsg of `length` bytes with `fd` attached as SCM_RIGHTS. Returns what
// sendmsg returns (-1 with errno set).
static inline ssize_t ckvm_send_with_fd(int socket, const void *bytes, size_t length, int fd, int flags) {
    struct iovec vector = { .iov_base = (void *)bytes, .iov_len = length };
    union { char buffer[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof(control));
    struct msghdr message = {0};
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control.buffer;
    message.msg_controllen = sizeof(control.buffer);
    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(header), &fd, sizeof(int));
    return sendmsg(socket, &message, flags);
}

// recvmsg of up to `length` bytes; the descriptors of every SCM_RIGHTS
// message received (MSG_CMSG_CLOEXEC) go to `fds`, at most `maximum` of
// them; any beyond that are closed. `*count` is how many were stored;
// `*truncated` is set when the kernel dropped control data (MSG_CTRUNC).
static inline ssize_t ckvm_receive_with_fds(int socket, void *bytes, size_t length, int *fds, int maximum, int *count, int *truncated) {
    struct iovec vector = { .iov_base = bytes, .iov_len = length };
    union { char buffer[CMSG_SPACE(sizeof(int) * 16)]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof(control));
    struct msghdr message = {0};
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control.buffer;
    message.msg_controllen = sizeof(control.buffer);
    *count = 0;
    *truncated = 0;
    ssize_t received = recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
    if (received < 0) return received;
    if (message.msg_flags & MSG_CTRUNC) *truncated = 1;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header != NULL; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        size_t payload = header->cmsg_len - CMSG_LEN(0);
        int n = (int)(payload / sizeof(int));
        for (int i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(header) + i * sizeof(int), sizeof(int));
            if (*count < maximum) fds[(*count)++] = fd;
            else close(fd);
        }
    }
    return received;
}

// SO_PEERCRED's pid (struct ucred needs _GNU_SOURCE, which Swift's Glibc lacks).
static inline int ckvm_peer_pid(int socket, int32_t *pid) {
    struct { int32_t pid; uint32_t uid; uint32_t gid; } credentials = {0};
    socklen_t length = sizeof(credentials);
    int result = getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &length);
    if (result == 0) *pid = credentials.pid;
    return result;
}

#endif
