// SwiftPM needs a source file per C target; the header is the interface.
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include "cfuzzdriver.h"

// A new mount namespace, and a new user namespace with it if asked.
int swiftlet_fuzz_unshare(int new_user_namespace) {
    return unshare(CLONE_NEWNS | (new_user_namespace ? CLONE_NEWUSER : 0));
}

// An O_PATH descriptor of a file or, if asked, only a directory (kept
// across mounts that hide it, and a bind-mount source).
int swiftlet_fuzz_open_path(const char *path, int directory) {
    return open(path, O_PATH | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
}
