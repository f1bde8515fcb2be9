/// The bzImage setup header (Linux x86 boot protocol, at file offset 0x1F1),
/// validated for the 64-bit entry. Only the fields a 64-bit loader needs are
/// parsed; `rawBytes` keeps the whole header for the zero page copy.
public struct SetupHeader: Equatable, Sendable {
    /// File offset of the header, and where it goes in boot_params.
    public static let offset = 0x1F1
    /// "HdrS", little-endian.
    public static let magic: UInt32 = 0x5372_6448
    public static let bootFlag: UInt16 = 0xAA55
    /// 2.12: the first protocol with the 64-bit entry flags in xloadflags.
    public static let minimumVersion: UInt16 = 0x020C
    /// loadflags bits.
    public static let loadedHigh: UInt8 = 0x01
    public static let canUseHeap: UInt8 = 0x80
    /// xloadflags bits.
    public static let xlfKernel64: UInt16 = 0x01
    public static let xlfCanBeLoadedAbove4G: UInt16 = 0x02
    /// Header ends the loader understands: up to init_size, at most up to where
    /// boot_params' next field starts.
    static let minimumEnd = 0x264
    static let maximumEnd = 0x290

    /// Setup sectors after the boot sector (a stored 0 means 4).
    public let setupSectors: Int
    /// Protected-mode code size in 16-byte paragraphs.
    public let syssize: UInt32
    /// Boot protocol version, e.g. 0x020F for 2.15.
    public let version: UInt16
    public let loadflags: UInt8
    /// Highest address the initrd's last byte may occupy.
    public let initrdAddressMax: UInt32
    /// Alignment a relocated kernel must be loaded at.
    public let kernelAlignment: UInt32
    public let relocatable: Bool
    public let xloadflags: UInt16
    /// Longest command line the kernel accepts, without the terminating NUL.
    public let commandLineSize: UInt32
    /// Where the kernel would like to be loaded (must be, if not relocatable).
    public let preferredAddress: UInt64
    /// Bytes the kernel needs from its load address while it decompresses.
    public let initSize: UInt32
    /// File offset of the header's end (0x202 + the jump's displacement byte).
    public let endOffset: Int
    /// The header bytes from 0x1F1 to `endOffset`, copied into the zero page.
    public let rawBytes: [UInt8]

    /// Size of the real-mode setup: the boot sector plus the setup sectors.
    public var setupSize: Int { (setupSectors + 1) * 512 }

    /// Parses and validates the header of a bzImage, including that the file
    /// is long enough for its setup and protected-mode kernel.
    public static func parse(_ image: [UInt8]) throws(BootError) -> SetupHeader {
        func field<T: FixedWidthInteger & UnsignedInteger>(_ type: T.Type, _ offset: Int) throws(BootError) -> T {
            guard let value = image.readLE(T.self, at: UInt64(offset)) else {
                throw .bzImageTruncated(part: .setupHeader, fileSize: image.count,
                                        needed: UInt64(offset + MemoryLayout<T>.size))
            }
            return value
        }
        // Boot flag, magic and version first, so an image that is not a bzImage
        // at all is told apart from one that is too old.
        guard image.count >= 0x208 else {
            throw .bzImageTruncated(part: .setupHeader, fileSize: image.count, needed: 0x208)
        }
        let bootFlag = try field(UInt16.self, 0x1FE)
        guard bootFlag == Self.bootFlag else { throw .bzImageBadBootFlag(found: bootFlag) }
        let magic = try field(UInt32.self, 0x202)
        guard magic == Self.magic else { throw .bzImageBadHeaderMagic(found: magic) }
        let version = try field(UInt16.self, 0x206)
        guard version >= minimumVersion else {
            throw .bzImageProtocolTooOld(found: version, required: minimumVersion)
        }
        let endOffset = 0x202 + Int(try field(UInt8.self, 0x201))
        guard (minimumEnd...maximumEnd).contains(endOffset) else {
            throw .bzImageBadSetupHeaderLength(end: endOffset)
        }
        guard image.count >= endOffset else {
            throw .bzImageTruncated(part: .setupHeader, fileSize: image.count, needed: UInt64(endOffset))
        }

        let loadflags = try field(UInt8.self, 0x211)
        guard loadflags & loadedHigh != 0 else { throw .bzImageNotLoadedHigh(loadflags: loadflags) }
        let xloadflags = try field(UInt16.self, 0x236)
        guard xloadflags & xlfKernel64 != 0 else { throw .bzImageNo64BitEntry(xloadflags: xloadflags) }

        let storedSectors = try field(UInt8.self, 0x1F1)
        let setupSectors = storedSectors == 0 ? 4 : Int(storedSectors)
        let setupSize = (setupSectors + 1) * 512
        guard image.count >= setupSize else {
            throw .bzImageTruncated(part: .setupSectors, fileSize: image.count, needed: UInt64(setupSize))
        }
        let syssize = try field(UInt32.self, 0x1F4)
        // At least one byte of kernel even if syssize is 0; syssize * 16 fits in 64 bits.
        let kernelEnd = UInt64(setupSize) + max(UInt64(syssize) * 16, 1)
        guard UInt64(image.count) >= kernelEnd else {
            throw .bzImageTruncated(part: .protectedModeKernel, fileSize: image.count, needed: kernelEnd)
        }

        let relocatable = try field(UInt8.self, 0x234) != 0
        let kernelAlignment = try field(UInt32.self, 0x230)
        guard !relocatable || kernelAlignment.nonzeroBitCount == 1 else {
            throw .bzImageBadKernelAlignment(found: kernelAlignment)
        }

        return SetupHeader(
            setupSectors: setupSectors,
            syssize: syssize,
            version: version,
            loadflags: loadflags,
            initrdAddressMax: try field(UInt32.self, 0x22C),
            kernelAlignment: kernelAlignment,
            relocatable: relocatable,
            xloadflags: xloadflags,
            commandLineSize: try field(UInt32.self, 0x238),
            preferredAddress: try field(UInt64.self, 0x258),
            initSize: try field(UInt32.self, 0x260),
            endOffset: endOffset,
            rawBytes: Array(image[offset..<endOffset]))
    }
}
