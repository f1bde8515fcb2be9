import GuestMemory

/// The Linux `boot_params` ("zero page") for the 64-bit boot protocol: the
/// kernel's own setup header with the loader's fields filled in, the e820
/// map and the ACPI RSDP. Built as bytes, then written in one piece.
public struct BootParams: Equatable, Sendable {
    public static let size = 4096
    public static let maximumE820Entries = 128

    // Offsets in struct boot_params (arch/x86/include/uapi/asm/bootparam.h).
    static let acpiRSDPAddressOffset = 0x070
    static let extRamdiskImageOffset = 0x0C0
    static let extRamdiskSizeOffset = 0x0C4
    static let extCommandLinePointerOffset = 0x0C8
    static let e820EntriesOffset = 0x1E8
    static let vidModeOffset = 0x1FA
    static let typeOfLoaderOffset = 0x210
    static let loadflagsOffset = 0x211
    static let ramdiskImageOffset = 0x218
    static let ramdiskSizeOffset = 0x21C
    static let heapEndPointerOffset = 0x224
    static let commandLinePointerOffset = 0x228
    static let e820TableOffset = 0x2D0
    static let e820EntrySize = 20

    /// "Undefined" boot loader: we have no assigned ID.
    static let typeOfLoaderUndefined: UInt8 = 0xFF
    /// "Normal" video mode: do not ask for a mode change.
    static let vidModeNormal: UInt16 = 0xFFFF
    /// End of the setup heap relative to the setup code, minus 0x200; the
    /// usual value for a full 64 KiB setup segment.
    static let heapEnd: UInt16 = 0xFE00

    public var setupHeader: SetupHeader
    public var commandLineAddress: GuestAddress?
    public var initrd: InitrdLocation?
    public var acpiRSDPAddress: GuestAddress?
    public var e820: [E820Entry]

    public init(
        setupHeader: SetupHeader,
        commandLineAddress: GuestAddress? = nil,
        initrd: InitrdLocation? = nil,
        acpiRSDPAddress: GuestAddress? = nil,
        e820: [E820Entry] = []
    ) {
        self.setupHeader = setupHeader
        self.commandLineAddress = commandLineAddress
        self.initrd = initrd
        self.acpiRSDPAddress = acpiRSDPAddress
        self.e820 = e820
    }

    /// The 4096-byte zero page. Addresses above 4 GiB go to the ext_ fields
    /// (the kernel reads them when XLF_CAN_BE_LOADED_ABOVE_4G is set).
    public func bytes() throws(BootError) -> [UInt8] {
        guard e820.count <= Self.maximumE820Entries else {
            throw .tooManyMemoryMapEntries(count: e820.count, maximum: Self.maximumE820Entries)
        }
        var page = [UInt8](repeating: 0, count: Self.size)
        // SetupHeader.parse bounded the header to end by 0x290, inside the page.
        page.replaceSubrange(SetupHeader.offset..<setupHeader.endOffset, with: setupHeader.rawBytes)

        page.storeLE(Self.vidModeNormal, at: Self.vidModeOffset)
        page[Self.typeOfLoaderOffset] = Self.typeOfLoaderUndefined
        page[Self.loadflagsOffset] = setupHeader.loadflags | SetupHeader.loadedHigh | SetupHeader.canUseHeap
        page.storeLE(Self.heapEnd, at: Self.heapEndPointerOffset)
        if let commandLineAddress {
            page.storeLE(UInt32(truncatingIfNeeded: commandLineAddress.rawValue), at: Self.commandLinePointerOffset)
            page.storeLE(UInt32(truncatingIfNeeded: commandLineAddress.rawValue >> 32), at: Self.extCommandLinePointerOffset)
        }
        if let initrd {
            page.storeLE(UInt32(truncatingIfNeeded: initrd.address.rawValue), at: Self.ramdiskImageOffset)
            page.storeLE(UInt32(truncatingIfNeeded: initrd.address.rawValue >> 32), at: Self.extRamdiskImageOffset)
            page.storeLE(UInt32(truncatingIfNeeded: initrd.size), at: Self.ramdiskSizeOffset)
            page.storeLE(UInt32(truncatingIfNeeded: initrd.size >> 32), at: Self.extRamdiskSizeOffset)
        }
        if let acpiRSDPAddress {
            page.storeLE(acpiRSDPAddress.rawValue, at: Self.acpiRSDPAddressOffset)
        }
        page[Self.e820EntriesOffset] = UInt8(e820.count)
        for (index, entry) in e820.enumerated() {
            let base = Self.e820TableOffset + index * Self.e820EntrySize
            page.storeLE(entry.address, at: base)
            page.storeLE(entry.size, at: base + 8)
            page.storeLE(entry.type.rawValue, at: base + 16)
        }
        return page
    }

    /// Writes the zero page at `address` (whose guest address goes in RSI).
    public func write(into memory: GuestMemory, at address: GuestAddress) throws(BootError) {
        let page = try bytes()
        do {
            try memory.write(bytes: page, at: address)
        } catch {
            throw error.during("writing the zero page at \(address)")
        }
    }
}
