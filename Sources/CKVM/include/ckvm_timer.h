// timerfd(2), which Swift's Glibc module does not import: rate limiters wait
// on a one-shot CLOCK_MONOTONIC timerfd in their device's epoll set.
#ifndef CKVM_TIMER_H
#define CKVM_TIMER_H

#include <sys/timerfd.h>

#endif
