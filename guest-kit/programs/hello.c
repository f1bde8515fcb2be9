/* hello: the smallest kit program. Prints "KIT hello PASS" and powers off. */
#include "kit.h"

KIT_PROGRAM("hello");

int kit_main(void)
{
    kit_puts("KIT hello ok\n");
    return 0;
}
