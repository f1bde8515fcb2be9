#include "czlib.h"
#include <string.h>
#include <zlib.h>

int czlib_inflate_raw(const void *input, size_t input_length, void *output, size_t output_length) {
    if (input_length > 0xffffffffu || output_length > 0xffffffffu) return -1;
    z_stream stream;
    memset(&stream, 0, sizeof stream);
    stream.next_in = (Bytef *)input;
    stream.avail_in = (uInt)input_length;
    stream.next_out = (Bytef *)output;
    stream.avail_out = (uInt)output_length;
    // Negative window bits: raw deflate, as QEMU writes it; 15 accepts any smaller window.
    if (inflateInit2(&stream, -15) != Z_OK) return -1;
    int result = inflate(&stream, Z_FINISH);
    // Z_BUF_ERROR with a full output: the cluster is complete and trailing
    // bytes (the sector padding) were not needed.
    int complete = (result == Z_STREAM_END || result == Z_BUF_ERROR) && stream.avail_out == 0;
    inflateEnd(&stream);
    return complete ? 0 : -1;
}
