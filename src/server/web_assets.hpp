// The web page (web/*.html|js|css), embedded at build time by CMake (src/server/web_assets.cpp.in).
#pragma once
#include <string_view>
#include <vector>

namespace mv::server {

struct WebAsset {
  std::string_view path;          // URL path, e.g. "/app.js"
  std::string_view content_type;  // with charset
  std::string_view body;
};

const std::vector<WebAsset>& web_assets();

}  // namespace mv::server
