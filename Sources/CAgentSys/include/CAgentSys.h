// What swiftlet-agent needs from libc, as plain functions: macros (W*,
// errno), variadic calls (ioctl, syscall) and posix_spawn's attribute
// set-up do not import into Swift, least of all Embedded Swift.
#ifndef CAGENTSYS_H
#define CAGENTSYS_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <limits.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static inline int agent_errno(void) { return errno; }

/// A listening AF_VSOCK stream socket on `port`, any CID; -errno on failure.
static inline int agent_listen_vsock(unsigned int port, int backlog) {
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    struct sockaddr_vm address;
    memset(&address, 0, sizeof address);
    address.svm_family = AF_VSOCK;
    address.svm_port = port;
    address.svm_cid = VMADDR_CID_ANY;
    if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0 || listen(fd, backlog) < 0) {
        int saved = errno;
        close(fd);
        return -saved;
    }
    return fd;
}

/// A listening Unix stream socket at `path` (replacing a stale one); -errno on failure.
static inline int agent_listen_unix(const char *path, int backlog) {
    struct sockaddr_un address;
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof address.sun_path) return -ENAMETOOLONG;
    strcpy(address.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    unlink(path);
    if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0 || listen(fd, backlog) < 0) {
        int saved = errno;
        close(fd);
        return -saved;
    }
    return fd;
}

static inline int agent_accept(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

static inline int agent_exited(int status) { return WIFEXITED(status); }
static inline int agent_exit_code(int status) { return WEXITSTATUS(status); }
static inline int agent_signaled(int status) { return WIFSIGNALED(status); }
static inline int agent_term_signal(int status) { return WTERMSIG(status); }

/// A pidfd that polls readable when `pid` ends; -errno (ENOSYS before Linux 5.3).
static inline int agent_pidfd_open(pid_t pid) {
    long fd = syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : (int)fd;
}

static inline int agent_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

static inline int agent_set_window_size(int fd, unsigned short rows, unsigned short columns) {
    struct winsize size;
    memset(&size, 0, sizeof size);
    size.ws_row = rows;
    size.ws_col = columns;
    return ioctl(fd, TIOCSWINSZ, &size);
}

/// Mounts devpts at /dev/pts (and /dev/ptmx to its ptmx) when a minimal
/// guest has not: the default guest mounts only what it needs at boot.
static inline void agent_mount_devpts(void) {
    mkdir("/dev/pts", 0755);
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666");
    if (access("/dev/ptmx", F_OK) != 0) symlink("pts/ptmx", "/dev/ptmx");
}

static inline int agent_open_pty_once(char *name, size_t length) {
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0) return -errno;
    if (grantpt(master) < 0 || unlockpt(master) < 0 || ptsname_r(master, name, length) != 0 || access(name, F_OK) != 0) {
        int saved = errno ? errno : ENOENT;
        close(master);
        return -saved;
    }
    return master;
}

/// A new pseudo-terminal: the master's fd, and the slave's path in `name`;
/// -errno on failure. Mounts devpts first if the guest has not.
static inline int agent_open_pty(char *name, size_t length) {
    int master = agent_open_pty_once(name, length);
    if (master >= 0) return master;
    agent_mount_devpts();
    return agent_open_pty_once(name, length);
}

/// Runs `fn(context)` on a new detached thread with a 256 KiB stack; 0 or an errno.
static inline int agent_start_thread(void *(*fn)(void *), void *context) {
    pthread_attr_t attributes;
    pthread_t thread;
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attributes, 256 * 1024);
    int result = pthread_create(&thread, &attributes, fn, context);
    pthread_attr_destroy(&attributes);
    return result;
}

static inline int agent_atomic_add(int *value, int delta) {
    return __atomic_add_fetch(value, delta, __ATOMIC_SEQ_CST);
}

/// Starts `path` in a new session with default signal dispositions and an
/// empty signal mask. With `terminal` set, stdin, stdout and stderr are the
/// pseudo-terminal slave `terminal` (opened after setsid, so it becomes the
/// controlling terminal); otherwise they are `in`, `out`, `err`. 0 or an errno.
static inline int agent_spawn(pid_t *pid, const char *path, char *const argv[], char *const envp[],
                              const char *directory, int in, int out, int err, const char *terminal) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attributes);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setsigmask(&attributes, &none);
    posix_spawnattr_setsigdefault(&attributes, &all);
    if (terminal != NULL) {
        posix_spawn_file_actions_addopen(&actions, 0, terminal, O_RDWR, 0);
        posix_spawn_file_actions_adddup2(&actions, 0, 1);
        posix_spawn_file_actions_adddup2(&actions, 0, 2);
    } else {
        posix_spawn_file_actions_adddup2(&actions, in, 0);
        posix_spawn_file_actions_adddup2(&actions, out, 1);
        posix_spawn_file_actions_adddup2(&actions, err, 2);
    }
    if (directory != NULL && directory[0] != 0) posix_spawn_file_actions_addchdir_np(&actions, directory);
    int result = posix_spawn(pid, path, &actions, &attributes, argv, envp);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
    return result;
}

static inline void agent_ignore_sigpipe(void) { signal(SIGPIPE, SIG_IGN); }

/// "eth0 10.0.0.2/24"-style lines for every non-loopback IPv4/IPv6 address,
/// separated by '\n', into `buffer`; the length written, or -errno.
static inline int agent_addresses(char *buffer, size_t capacity) {
    struct ifaddrs *list, *entry;
    if (getifaddrs(&list) < 0) return -errno;
    size_t used = 0;
    buffer[0] = 0;
    for (entry = list; entry != NULL; entry = entry->ifa_next) {
        if (entry->ifa_addr == NULL || (entry->ifa_flags & IFF_LOOPBACK)) continue;
        int family = entry->ifa_addr->sa_family;
        if (family != AF_INET && family != AF_INET6) continue;
        char text[INET6_ADDRSTRLEN];
        const void *address = family == AF_INET
            ? (const void *)&((struct sockaddr_in *)entry->ifa_addr)->sin_addr
            : (const void *)&((struct sockaddr_in6 *)entry->ifa_addr)->sin6_addr;
        if (inet_ntop(family, address, text, sizeof text) == NULL) continue;
        int prefix = 0;
        if (entry->ifa_netmask != NULL) {
            const unsigned char *mask = family == AF_INET
                ? (const unsigned char *)&((struct sockaddr_in *)entry->ifa_netmask)->sin_addr
                : (const unsigned char *)&((struct sockaddr_in6 *)entry->ifa_netmask)->sin6_addr;
            for (int i = 0; i < (family == AF_INET ? 4 : 16); i++) prefix += __builtin_popcount(mask[i]);
        }
        int written = snprintf(buffer + used, capacity - used, "%s%s %s/%d", used ? "\n" : "", entry->ifa_name, text, prefix);
        if (written < 0 || (size_t)written >= capacity - used) break;
        used += (size_t)written;
    }
    freeifaddrs(list);
    return (int)used;
}

static inline int agent_power_off(int reboot_instead) {
    sync();
    return reboot(reboot_instead ? RB_AUTOBOOT : RB_POWER_OFF);
}

static inline long agent_cpus(void) { return sysconf(_SC_NPROCESSORS_ONLN); }

static inline uint64_t agent_monotonic_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
}

/// open(2) with a mode (variadic functions do not import into Swift).
static inline int agent_open(const char *path, int flags, unsigned int mode) { return open(path, flags, (mode_t)mode); }

extern char **environ;
/// The agent's own environment (the C global does not import into Embedded Swift).
static inline char **agent_environment(void) { return environ; }

#endif
