//! MetalLB's configuration read as it is: its objects, its Service
//! annotations, and what they mean for lb's pools and announcements.
pub mod advertisements;
pub mod crds;
pub mod objects;
pub mod pools;
