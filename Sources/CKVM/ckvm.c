// Shim functions that need a C body.
#include "ckvm.h"
#include <signal.h>
#include <string.h>

static void ckvm_kick_handler(int signal_number) { (void)signal_number; }

int ckvm_install_kick_handler(int signal_number) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = ckvm_kick_handler;
    sigemptyset(&action.sa_mask);
    return sigaction(signal_number, &action, NULL);
}

int ckvm_tun_set_interface(int fd, const char *name, short flags) {
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    request.ifr_flags = flags;
    return ioctl(fd, TUNSETIFF, &request);
}

int ckvm_tun_set_queue(int fd, short flags) {
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    request.ifr_flags = flags;
    return ioctl(fd, TUNSETQUEUE, &request);
}

int ckvm_tun_get_interface(int fd, char *name, short *flags) {
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    int result = ioctl(fd, TUNGETIFF, &request);
    if (result < 0) return result;
    memcpy(name, request.ifr_name, IFNAMSIZ);
    name[IFNAMSIZ - 1] = 0;
    *flags = request.ifr_flags;
    return result;
}
