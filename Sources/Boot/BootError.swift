import GuestMemory

/// Which part of a bzImage a short file cut off.
public enum BzImagePart: String, Equatable, Sendable {
    case setupHeader = "setup header"
    case setupSectors = "setup sectors"
    case protectedModeKernel = "protected-mode kernel"
}

/// Everything that can go wrong while loading a kernel and building what it
/// reads at boot. Each case names the step that failed, the offending value and
/// what would have been accepted, so one line tells the user what to fix.
public enum BootError: Error, Equatable, Sendable, CustomStringConvertible {
    // MARK: Detection

    /// Neither the ELF magic nor a bzImage header was found.
    case unrecognizedImage(firstBytes: [UInt8])

    // MARK: ELF

    /// The file is shorter than the 64-byte ELF64 header.
    case elfHeaderTruncated(fileSize: Int)
    /// EI_CLASS is not ELFCLASS64 (2).
    case elfNotClass64(found: UInt8)
    /// EI_DATA is not ELFDATA2LSB (1).
    case elfNotLittleEndian(found: UInt8)
    /// e_machine is not EM_X86_64 (62).
    case elfWrongMachine(found: UInt16)
    /// e_type is not ET_EXEC (2).
    case elfWrongType(found: UInt16)
    /// e_phentsize is not the 56 bytes of an Elf64_Phdr.
    case elfBadProgramHeaderSize(found: UInt16)
    /// The program header table does not lie inside the file.
    case elfProgramHeadersOutsideFile(offset: UInt64, count: UInt16, fileSize: Int)
    /// The section header table (searched for notes) does not lie inside the file.
    case elfSectionHeadersOutsideFile(offset: UInt64, count: UInt16, entrySize: UInt16, fileSize: Int)
    /// No PT_LOAD segment with bytes in memory.
    case elfNoLoadableSegment
    /// Segment `index`'s file bytes run past the end of the file.
    case elfSegmentOutsideFile(index: Int, offset: UInt64, fileSize: UInt64, imageSize: Int)
    /// Segment `index` has more file bytes than memory bytes.
    case elfSegmentFileSizeExceedsMemorySize(index: Int, fileSize: UInt64, memorySize: UInt64)
    /// Segment `index` does not fit inside one guest RAM region.
    case elfSegmentOutsideMemory(index: Int, address: GuestAddress, memorySize: UInt64)
    /// Segment `index` would overwrite the VMM's boot structures below `highMemoryStart`.
    case elfSegmentBelowHighMemory(index: Int, address: GuestAddress, highMemoryStart: GuestAddress)
    /// A note's declared sizes run past the end of its note area.
    case elfNoteMalformed(noteOffset: UInt64, nameSize: UInt32, descriptorSize: UInt32, bytesLeft: UInt64)
    /// The XEN_ELFNOTE_PHYS32_ENTRY descriptor is neither 4 nor 8 bytes.
    case pvhEntryBadSize(descriptorSize: UInt32)
    /// The PVH entry is not reachable from 32-bit protected mode.
    case pvhEntryAbove4GiB(entry: UInt64)
    /// The entry point is not guest RAM.
    case entryOutsideMemory(entry: GuestAddress)

    // MARK: bzImage

    /// The file ends before the named part is complete.
    case bzImageTruncated(part: BzImagePart, fileSize: Int, needed: UInt64)
    /// boot_flag at 0x1FE is not 0xAA55.
    case bzImageBadBootFlag(found: UInt16)
    /// The header magic at 0x202 is not "HdrS".
    case bzImageBadHeaderMagic(found: UInt32)
    /// The boot protocol is older than the 64-bit entry needs.
    case bzImageProtocolTooOld(found: UInt16, required: UInt16)
    /// The setup header's end (0x202 + byte at 0x201) is outside the range boot_params has room for.
    case bzImageBadSetupHeaderLength(end: Int)
    /// loadflags lacks LOADED_HIGH: the kernel wants to run at 0x10000.
    case bzImageNotLoadedHigh(loadflags: UInt8)
    /// xloadflags lacks XLF_KERNEL_64: there is no 64-bit entry point.
    case bzImageNo64BitEntry(xloadflags: UInt16)
    /// kernel_alignment is not a power of two.
    case bzImageBadKernelAlignment(found: UInt32)
    /// The kernel's `footprint` bytes fit at none of the addresses tried.
    case bzImageDoesNotFit(footprint: UInt64, tried: [GuestAddress])

    // MARK: Boot structures

    /// More memory map entries than the zero page or the PVH map holds.
    case tooManyMemoryMapEntries(count: Int, maximum: Int)
    /// Two of the PVH start info, module list and memory map overlap.
    case pvhTablesOverlap(first: String, firstStart: GuestAddress, firstSize: UInt64,
                          second: String, secondStart: GuestAddress, secondSize: UInt64)
    /// A RAM range given to the e820 builder lies in the MMIO hole.
    case e820RangeInHole(start: GuestAddress, size: UInt64, holeStart: GuestAddress, holeEnd: GuestAddress)
    /// A RAM range given to the e820 builder is empty, wraps past 2^64 or overlaps another.
    case e820BadRange(start: GuestAddress, size: UInt64)
    /// The initrd is empty: the caller should pass none.
    case initrdEmpty
    /// No page-aligned place above the kernel and below the limit holds the initrd.
    case initrdDoesNotFit(size: UInt64, kernelEnd: GuestAddress, maxAddress: GuestAddress, largestGap: UInt64)

    // MARK: Command line

    /// The command line would exceed what the kernel accepts.
    case commandLineTooLong(length: Int, limit: Int)
    /// A control character (NUL, newline...) in a parameter.
    case commandLineInvalidCharacter(parameter: String, scalar: UInt32)
    /// A parameter opens a double quote it does not close.
    case commandLineUnbalancedQuote(parameter: String)
    /// A key that is empty or holds a space, '=' or a quote.
    case commandLineInvalidKey(key: String)
    /// A value holding a double quote, which Linux cannot escape.
    case commandLineInvalidValue(key: String, value: String)

    // MARK: Guest memory

    /// Guest memory refused an access during `step`.
    case guestMemory(step: String, GuestMemoryError)

    public var description: String {
        switch self {
        case let .unrecognizedImage(firstBytes):
            let shown = firstBytes.isEmpty ? "(empty file)" : firstBytes.map(hexByte).joined(separator: " ")
            return "not an ELF vmlinux or a bzImage: first bytes \(shown) (expected 7f 45 4c 46 for ELF, or \"HdrS\" at 0x202 for a bzImage)"
        case let .elfHeaderTruncated(fileSize):
            return "reading the ELF header: the file has \(fileSize) bytes, an ELF64 header needs 64"
        case let .elfNotClass64(found):
            return "checking the ELF class: found \(found)\(found == 1 ? " (32-bit)" : ""), only ELFCLASS64 (2) is supported"
        case let .elfNotLittleEndian(found):
            return "checking the ELF data encoding: found \(found), only little-endian (1) is supported"
        case let .elfWrongMachine(found):
            return "checking the ELF machine: found \(found), only EM_X86_64 (62) is supported"
        case let .elfWrongType(found):
            return "checking the ELF type: found \(found), only ET_EXEC (2) executables are supported"
        case let .elfBadProgramHeaderSize(found):
            return "reading the ELF program headers: e_phentsize is \(found), an Elf64_Phdr is 56 bytes"
        case let .elfProgramHeadersOutsideFile(offset, count, fileSize):
            return "reading the ELF program headers: \(count) entries of 56 bytes at file offset \(hex(offset)) run past the end of the \(hex(fileSize))-byte file"
        case let .elfSectionHeadersOutsideFile(offset, count, entrySize, fileSize):
            return "reading the ELF section headers: \(count) entries of \(entrySize) bytes at file offset \(hex(offset)) do not fit in the \(hex(fileSize))-byte file (entries must be 64 bytes, inside the file)"
        case .elfNoLoadableSegment:
            return "loading the ELF: no PT_LOAD segment with a non-zero memory size"
        case let .elfSegmentOutsideFile(index, offset, fileSize, imageSize):
            return "loading ELF segment \(index): \(hex(fileSize)) bytes at file offset \(hex(offset)) run past the end of the \(hex(imageSize))-byte file"
        case let .elfSegmentFileSizeExceedsMemorySize(index, fileSize, memorySize):
            return "loading ELF segment \(index): p_filesz \(hex(fileSize)) exceeds p_memsz \(hex(memorySize)) (must be at most p_memsz)"
        case let .elfSegmentOutsideMemory(index, address, memorySize):
            return "loading ELF segment \(index): \(hex(memorySize)) bytes at \(address) are not inside one guest RAM region"
        case let .elfSegmentBelowHighMemory(index, address, highMemoryStart):
            return "loading ELF segment \(index): it starts at \(address), below \(highMemoryStart) where kernels may begin"
        case let .elfNoteMalformed(noteOffset, nameSize, descriptorSize, bytesLeft):
            return "reading ELF notes: the note at file offset \(hex(noteOffset)) declares namesz \(hex(nameSize)) and descsz \(hex(descriptorSize)), but only \(hex(bytesLeft)) bytes are left in its note area"
        case let .pvhEntryBadSize(descriptorSize):
            return "reading the PVH entry note: its descriptor is \(descriptorSize) bytes, expected 4 or 8"
        case let .pvhEntryAbove4GiB(entry):
            return "reading the PVH entry note: entry \(hex(entry)) is not below 4 GiB, as a 32-bit entry must be"
        case let .entryOutsideMemory(entry):
            return "checking the kernel entry point: \(entry) is not guest RAM"
        case let .bzImageTruncated(part, fileSize, needed):
            return "reading the bzImage \(part.rawValue): the file has \(hex(fileSize)) bytes, at least \(hex(needed)) are needed"
        case let .bzImageBadBootFlag(found):
            return "checking the bzImage boot flag at 0x1fe: found \(hex(found)), expected 0xaa55"
        case let .bzImageBadHeaderMagic(found):
            return "checking the bzImage header magic at 0x202: found \(hex(found)), expected 0x53726448 (\"HdrS\")"
        case let .bzImageProtocolTooOld(found, required):
            return "checking the boot protocol version: the kernel has \(protocolVersion(found)), \(protocolVersion(required)) or later is needed"
        case let .bzImageBadSetupHeaderLength(end):
            return "reading the bzImage setup header: it ends at \(hex(end)) (0x202 + byte at 0x201), expected between 0x264 and 0x290"
        case let .bzImageNotLoadedHigh(loadflags):
            return "checking bzImage loadflags: \(hex(loadflags)) lacks LOADED_HIGH (0x1), only kernels loaded at 1 MiB or above are supported"
        case let .bzImageNo64BitEntry(xloadflags):
            return "checking bzImage xloadflags: \(hex(xloadflags)) lacks XLF_KERNEL_64 (0x1), the kernel has no 64-bit entry point"
        case let .bzImageBadKernelAlignment(found):
            return "checking bzImage kernel_alignment: \(hex(found)) is not a power of two"
        case let .bzImageDoesNotFit(footprint, tried):
            let places = tried.isEmpty ? "any address (none at or above the high-memory start)" : tried.map(\.description).joined(separator: " or ")
            return "placing the bzImage: its \(hex(footprint)) bytes (the larger of init_size and the file payload) do not fit in one guest RAM region at \(places)"
        case let .tooManyMemoryMapEntries(count, maximum):
            return "writing the memory map: \(count) entries, at most \(maximum) fit"
        case let .pvhTablesOverlap(first, firstStart, firstSize, second, secondStart, secondSize):
            return "writing the PVH start info: the \(first) (\(hex(firstSize)) bytes at \(firstStart)) overlaps the \(second) (\(hex(secondSize)) bytes at \(secondStart))"
        case let .e820RangeInHole(start, size, holeStart, holeEnd):
            return "building the e820 map: RAM range at \(start) of \(hex(size)) bytes reaches into the MMIO hole \(holeStart)..<\(holeEnd); RAM must end at the hole and resume above it"
        case let .e820BadRange(start, size):
            return "building the e820 map: RAM range at \(start) of \(hex(size)) bytes is empty, wraps past 2^64 or overlaps another range"
        case .initrdEmpty:
            return "placing the initrd: it is empty (0 bytes); pass no initrd instead"
        case let .initrdDoesNotFit(size, kernelEnd, maxAddress, largestGap):
            return "placing the initrd: \(hex(size)) bytes do not fit between the kernel end \(kernelEnd) and the limit \(maxAddress); the largest free page-aligned gap is \(hex(largestGap)) bytes"
        case let .commandLineTooLong(length, limit):
            return "building the kernel command line: it would be \(length) bytes, the kernel accepts at most \(limit)"
        case let .commandLineInvalidCharacter(parameter, scalar):
            return "building the kernel command line: parameter \"\(printable(parameter))\" holds control character U+\(hexDigits(scalar, width: 4)); only printable characters are allowed"
        case let .commandLineUnbalancedQuote(parameter):
            return "building the kernel command line: parameter \"\(printable(parameter))\" opens a double quote it never closes"
        case let .commandLineInvalidKey(key):
            return "building the kernel command line: key \"\(printable(key))\" must be non-empty, without whitespace, '=' or quotes"
        case let .commandLineInvalidValue(key, value):
            return "building the kernel command line: value \"\(printable(value))\" of \(printable(key)) holds a double quote, which the kernel cannot escape"
        case let .guestMemory(step, error):
            return "\(step): \(error)"
        }
    }
}

// MARK: Formatting helpers shared by the Boot target

func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }

func hexDigits<T: BinaryInteger>(_ value: T, width: Int) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
}

func hexByte(_ byte: UInt8) -> String { hexDigits(byte, width: 2) }

/// "2.12" from 0x020C: boot.rst writes the minor number in decimal.
func protocolVersion(_ version: UInt16) -> String {
    let minor = version & 0xFF
    return "\(version >> 8).\(minor < 10 ? "0" : "")\(minor)"
}

/// The text with control characters shown as escapes, so an error stays one line.
func printable(_ text: String) -> String {
    var out = ""
    for scalar in text.unicodeScalars {
        if scalar.value < 0x20 || scalar.value == 0x7F {
            out += "\\u{\(String(scalar.value, radix: 16))}"
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
    return out
}

extension GuestMemoryError {
    /// This failure, tagged with the step it interrupted.
    func during(_ step: String) -> BootError { .guestMemory(step: step, self) }
}
