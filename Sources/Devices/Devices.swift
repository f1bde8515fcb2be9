// The Devices module; see the files beside this one.
