// libFuzzer's entry point for programs that keep their own main().
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

// For the file-system sandbox (FileSystemSandbox.swift): Glibc exports these
// only with _GNU_SOURCE, which Swift's Glibc module does not define.
int swiftlet_fuzz_unshare(int new_user_namespace);
int swiftlet_fuzz_open_path(const char *path, int directory);
