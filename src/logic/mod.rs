//! Pure logic, unit- and property-tested without a cluster: profile resolution, the image catalog,
//! the VM phase decision, assignment and durations.

pub mod assign;
pub mod catalog;
pub mod decide;
pub mod duration;
pub mod planner;
pub mod resolve;
pub mod rings;
pub mod rollout;
pub mod window;
