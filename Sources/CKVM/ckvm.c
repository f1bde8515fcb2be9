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
