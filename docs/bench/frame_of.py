"""Save one frame of a video as JPEG: python docs/bench/frame_of.py VIDEO INDEX OUT.jpg"""

import sys

import av

video, index, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with av.open(video) as container:
    for number, frame in enumerate(container.decode(video=0)):
        if number == index:
            frame.to_image().save(out, quality=88)
            break
    else:
        sys.exit(f"{video} has no frame {index}")
