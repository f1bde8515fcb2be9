/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the snapshot
/// file's checksum: it catches torn writes and flipped bits, not tampering
/// (the files are as trusted as the host directory holding them).
public enum CRC32C {
    static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 {
            value = value & 1 == 1 ? (value >> 1) ^ 0x82F6_3B78 : value >> 1
        }
        return value
    }

    /// The checksum of `bytes`; `checksum(of: "123456789".utf8) == 0xE3069283`.
    public static func checksum(of bytes: some Sequence<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { table in
            for byte in bytes {
                // SAFETY: the index is masked to 0...255 and the table has 256 entries.
                crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8)
            }
        }
        return crc ^ 0xFFFF_FFFF
    }
}
