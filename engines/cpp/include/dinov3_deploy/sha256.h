// SHA-256 of a file, to check an artifact's files against the hashes its manifest lists (the same
// check, and the same message, as the Python loader).
#pragma once

#include <string>

#include "dinov3_deploy/status.h"

namespace dinov3_deploy {

// Lower-case hex digest of the bytes of `data`.
std::string sha256_hex(const std::string& data);
// Lower-case hex digest of the file at `path`, read in chunks.
Result<std::string> sha256_file(const std::string& path);

}  // namespace dinov3_deploy
