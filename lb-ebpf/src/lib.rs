//! Empty library target: lets `lb-userspace` name this crate as a build
//! dependency, so cargo rebuilds the embedded object when this crate changes.
#![no_std]
