// SwiftPM needs a source file per C target; the header is the interface.
#include "cfuzzdriver.h"
