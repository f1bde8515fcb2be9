import CKVM

/// Fills `buffer` from the kernel's random number generator (getrandom(2),
/// blocking only until the pool is first initialised); returns how many
/// bytes it wrote, which may be fewer than asked for large buffers.
public func fillRandom(_ buffer: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int {
    guard let base = buffer.baseAddress, !buffer.isEmpty else { return 0 }
    return try systemCall("getrandom") { ckvm_getrandom(base, UInt(buffer.count), 0) }
}
