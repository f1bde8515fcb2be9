// CAgentSys is header-only (static inline functions); SwiftPM needs one source file.
#include "CAgentSys.h"
