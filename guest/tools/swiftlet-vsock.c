/*
 * swiftlet-vsock: a small AF_VSOCK stream tool for Swiftlet's default guest
 * (installed as /bin/swiftlet-vsock; built static by guest/build-image).
 *
 *   swiftlet-vsock listen PORT MODE [COUNT]
 *       Accepts COUNT connections (default 1; 0 = forever) on PORT, each
 *       served by a child process, so several streams run at once.
 *   swiftlet-vsock connect CID PORT MODE
 *       Connects to CID:PORT (the host is CID 2).
 *
 *   MODE   echo         send back what arrives, until end of file
 *          sum          read to end of file, answer "SUM <fnv1a hex> <bytes>\n"
 *          send N       write N bytes of the pattern, shut down the write
 *                       side, then copy what comes back to stdout
 *          recv         read to end of file, print "SUM <fnv1a hex> <bytes>"
 *          cat          stdin to the socket, the socket to stdout
 *
 * The pattern's byte i is (i * 7 + 3) & 0xff. Errors print one line
 * ("swiftlet-vsock: connect 2:9: Connection reset by peer") and exit 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static char buffer[256 * 1024];

static void fail(const char *what)
{
    fprintf(stderr, "swiftlet-vsock: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(void)
{
    fprintf(stderr, "usage: swiftlet-vsock listen PORT MODE [COUNT] | connect CID PORT MODE\n"
                    "       MODE: echo | sum | send N | recv | cat\n");
    exit(2);
}

static uint32_t fnv(uint32_t h, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static int write_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads to end of file; returns the byte count and the checksum. */
static uint64_t drain(int fd, uint32_t *sum, int copy_to)
{
    uint64_t total = 0;
    uint32_t h = 2166136261u;
    for (;;) {
        ssize_t r = read(fd, buffer, sizeof buffer);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            fail("read");
        if (r == 0)
            break;
        h = fnv(h, (unsigned char *)buffer, (size_t)r);
        total += (uint64_t)r;
        if (copy_to >= 0 && write_all(copy_to, buffer, (size_t)r) < 0)
            fail("write");
    }
    if (sum)
        *sum = h;
    return total;
}

static void serve(int fd, int argc, char **argv)
{
    const char *mode = argv[0];
    if (!strcmp(mode, "echo")) {
        for (;;) {
            ssize_t r = read(fd, buffer, sizeof buffer);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                fail("read");
            if (r == 0)
                break;
            if (write_all(fd, buffer, (size_t)r) < 0)
                fail("write");
        }
    } else if (!strcmp(mode, "sum")) {
        uint32_t h;
        uint64_t n = drain(fd, &h, -1);
        char line[64];
        int len = snprintf(line, sizeof line, "SUM %08x %llu\n", h, (unsigned long long)n);
        if (write_all(fd, line, (size_t)len) < 0)
            fail("write");
    } else if (!strcmp(mode, "recv")) {
        uint32_t h;
        uint64_t n = drain(fd, &h, -1);
        printf("SUM %08x %llu\n", h, (unsigned long long)n);
    } else if (!strcmp(mode, "send")) {
        if (argc < 2)
            usage();
        unsigned long long want = strtoull(argv[1], NULL, 0), sent = 0;
        while (sent < want) {
            size_t n = want - sent < sizeof buffer ? (size_t)(want - sent) : sizeof buffer;
            for (size_t i = 0; i < n; i++)
                buffer[i] = (char)((sent + i) * 7 + 3);
            if (write_all(fd, buffer, n) < 0)
                fail("write");
            sent += n;
        }
        shutdown(fd, SHUT_WR);
        drain(fd, NULL, 1);
    } else if (!strcmp(mode, "cat")) {
        struct pollfd fds[2] = { { 0, POLLIN, 0 }, { fd, POLLIN, 0 } };
        int open_in = 1;
        for (;;) {
            fds[0].fd = open_in ? 0 : -1;
            if (poll(fds, 2, -1) < 0) {
                if (errno == EINTR)
                    continue;
                fail("poll");
            }
            if (fds[0].revents) {
                ssize_t r = read(0, buffer, sizeof buffer);
                if (r <= 0) {
                    open_in = 0;
                    shutdown(fd, SHUT_WR);
                } else if (write_all(fd, buffer, (size_t)r) < 0) {
                    fail("write");
                }
            }
            if (fds[1].revents) {
                ssize_t r = read(fd, buffer, sizeof buffer);
                if (r < 0)
                    fail("read");
                if (r == 0)
                    break;
                if (write_all(1, buffer, (size_t)r) < 0)
                    fail("write");
            }
        }
    } else {
        usage();
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 4 && !strcmp(argv[1], "listen")) {
        unsigned port = (unsigned)strtoul(argv[2], NULL, 0);
        int count = 1;
        if ((!strcmp(argv[3], "send") && argc >= 6) || (strcmp(argv[3], "send") && argc >= 5))
            count = atoi(argv[argc - 1]);
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (s < 0)
            fail("socket");
        struct sockaddr_vm address = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
        if (bind(s, (struct sockaddr *)&address, sizeof address) < 0)
            fail("bind");
        if (listen(s, 64) < 0)
            fail("listen");
        printf("LISTENING %u\n", port);
        fflush(stdout);
        int children = 0;
        for (int served = 0; count == 0 || served < count; served++) {
            int c = accept(s, NULL, NULL);
            if (c < 0) {
                if (errno == EINTR)
                    continue;
                fail("accept");
            }
            pid_t pid = fork();
            if (pid == 0) {
                close(s);
                serve(c, argc - 3, argv + 3);
                close(c);
                _exit(0);
            }
            close(c);
            if (pid > 0)
                children++;
        }
        int status = 0, failed = 0;
        while (children-- > 0 && wait(&status) > 0)
            failed |= !WIFEXITED(status) || WEXITSTATUS(status);
        return failed;
    }
    if (argc >= 5 && !strcmp(argv[1], "connect")) {
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (s < 0)
            fail("socket");
        struct sockaddr_vm address = { .svm_family = AF_VSOCK, .svm_cid = (unsigned)strtoul(argv[2], NULL, 0),
                                       .svm_port = (unsigned)strtoul(argv[3], NULL, 0) };
        if (connect(s, (struct sockaddr *)&address, sizeof address) < 0) {
            char what[64];
            snprintf(what, sizeof what, "connect %s:%s", argv[2], argv[3]);
            fail(what);
        }
        serve(s, argc - 4, argv + 4);
        close(s);
        return 0;
    }
    usage();
    return 2;
}
