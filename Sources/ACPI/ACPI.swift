// The ACPI module; see the files beside this one.
