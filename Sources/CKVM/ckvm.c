// Shim functions that need a C body.
#define _GNU_SOURCE 1 // dl_iterate_phdr and struct dl_phdr_info in <link.h>
#include "ckvm.h"
#include <link.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

struct ckvm_segments { uintptr_t *starts, *lengths; int *writable; int capacity, count; };

static int ckvm_collect_segments(struct dl_phdr_info *info, size_t size, void *context) {
    (void)size;
    struct ckvm_segments *found = context;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int index = 0; index < info->dlpi_phnum && found->count < found->capacity; index++) {
        const ElfW(Phdr) *segment = &info->dlpi_phdr[index];
        if (segment->p_type != PT_LOAD || segment->p_memsz == 0) continue;
        uintptr_t start = (info->dlpi_addr + segment->p_vaddr) & ~(page - 1);
        uintptr_t end = (info->dlpi_addr + segment->p_vaddr + segment->p_memsz + page - 1) & ~(page - 1);
        found->starts[found->count] = start;
        found->lengths[found->count] = end - start;
        found->writable[found->count] = (segment->p_flags & PF_W) != 0;
        found->count++;
    }
    return 1; // the first object is the program itself
}

int ckvm_program_segments(uintptr_t *starts, uintptr_t *lengths, int *writable, int capacity) {
    struct ckvm_segments found = { starts, lengths, writable, capacity, 0 };
    dl_iterate_phdr(ckvm_collect_segments, &found);
    return found.count;
}

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
