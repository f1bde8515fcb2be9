// The Boot module; see the files beside this one.
