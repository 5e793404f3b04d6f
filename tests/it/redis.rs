//! Scale-out on Redis (SPEC §9): several instances on one real redis-server.
