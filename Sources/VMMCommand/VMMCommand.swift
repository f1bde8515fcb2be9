// The VMMCommand module; see the files beside this one.
