/**
 * `dolake`: the protocol types, configuration and a ready client for DoSQL
 * shards streaming change events to DoLake (a Rust Durable Object; this
 * package does not contain it: bind the deployed `DoLake` class by
 * `script_name`, see the repository's README).
 */
export * from './protocol.js';
export * from './config.js';
export * from './client.js';
