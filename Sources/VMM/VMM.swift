// The VMM module; see the files beside this one.
