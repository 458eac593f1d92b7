// stb_image / stb_image_write, declarations only (the implementations are compiled once, in
// stb_impl.c, where their warnings do not concern this project's -Werror).
#pragma once
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
