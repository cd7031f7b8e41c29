// Lets Node load headstream.js outside a component: the contract's host import (which only a
// component has) resolves to host-absent.mjs, whose functions say so if called. The unit tests
// exercise the SDK's pure parts; the host functions are exercised inside real components.
import { register } from "node:module";

register("./resolve.mjs", import.meta.url);
