// zlib's raw-deflate decompression as one plain function: inflateInit2 is a
// macro, which Swift cannot call, and qcow2's compressed clusters need only this.
#ifndef CZLIB_H
#define CZLIB_H
#include <stddef.h>

/// Inflates raw deflate data (no zlib header) from `input` into `output`.
/// Returns 0 when `output` was filled completely, -1 otherwise (corrupt or
/// short data).
int czlib_inflate_raw(const void *input, size_t input_length, void *output, size_t output_length);

#endif
