// KVM handles; see the files beside this one.
