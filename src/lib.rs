pub mod api;
pub mod clock;
pub mod controller;
pub mod guest;
pub mod identity;
pub mod kubeconfig;
pub mod logic;
pub mod plugin;
